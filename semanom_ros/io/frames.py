"""Frames from rosbag2 bags (read with ``rosbags``, no ROS install needed) and from image folders.

Everything streams: one message (or one MCAP chunk) is in memory at a time.
A message that cannot be deserialized or decoded is skipped, counted in a
:class:`SkipStats` and warned about; a damaged bag file is read up to the
damage, then a warning is emitted and iteration stops without an exception.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from .images import decode_image

__all__ = [
    "BAG_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "IMAGE_MSGTYPES",
    "Frame",
    "SkipStats",
    "iter_bag_frames",
    "iter_folder_frames",
    "iter_frames",
    "list_image_topics",
    "ros2_typestore",
]

IMAGE_MSGTYPES: tuple[str, ...] = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
BAG_SUFFIXES: tuple[str, ...] = (".mcap", ".db3")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")

_log = logging.getLogger(__name__)
# Per-message warnings beyond this are counted only, so a bag with thousands of
# bad messages does not flood the log.
_MAX_ITEM_WARNINGS = 20


@dataclass(eq=False)  # comparing ndarrays with == is ambiguous; compare fields explicitly
class Frame:
    """One RGB frame and where it came from."""

    rgb: np.ndarray
    """(H, W, 3) uint8, RGB order, C-contiguous."""
    source: str
    """Bag path or folder path as given."""
    index: int
    """Ordinal of the message on the topic (or file in the folder), counting skipped ones."""
    stamp_ns: int
    """Header stamp if non-zero, else bag receive time; folders: ``round(index * 1e9 / fps)``."""
    topic: str | None
    """Bag topic; None for folders."""
    name: str
    """File name, or ``f"{topic}@{stamp_ns}"`` for bags."""


@dataclass
class SkipStats:
    """Counts of messages/files not turned into frames, by reason, plus the warnings emitted.

    ``read_error`` counts damaged-file events (reading stopped early), not frames,
    and is therefore not part of :attr:`skipped`.
    """

    yielded: int = 0
    decode_error: int = 0
    deserialize_error: int = 0
    stride: int = 0
    time_range: int = 0
    min_interval: int = 0
    max_count: int = 0
    read_error: int = 0
    warnings: list[str] = field(default_factory=list)

    REASONS: ClassVar[tuple[str, ...]] = (
        "decode_error", "deserialize_error", "stride", "time_range", "min_interval", "max_count",
    )

    @property
    def skipped(self) -> int:
        """Total number of skipped messages/files over all reasons."""
        return sum(getattr(self, r) for r in self.REASONS)

    def summary(self) -> str:
        """One line such as ``"140 frames, 10 skipped (stride=8, decode_error=2)"``."""
        parts = [f"{r}={getattr(self, r)}" for r in self.REASONS if getattr(self, r)]
        text = f"{self.yielded} frames, {self.skipped} skipped"
        if parts:
            text += f" ({', '.join(parts)})"
        if self.read_error:
            text += f"; reading stopped early {self.read_error}x (damaged file)"
        return text


class _Warner:
    def __init__(self, stats: SkipStats, logger: Any) -> None:
        self.stats = stats
        self.logger = logger if logger is not None else _log
        self.items = 0

    def warn(self, text: str) -> None:
        self.stats.warnings.append(text)
        # rclpy loggers and logging.Logger both have .warning(str).
        self.logger.warning(text)

    def item(self, text: str) -> None:
        self.items += 1
        if self.items <= _MAX_ITEM_WARNINGS:
            self.warn(text)
        elif self.items == _MAX_ITEM_WARNINGS + 1:
            self.warn(
                f"More than {_MAX_ITEM_WARNINGS} frames skipped with errors; further ones are "
                f"only counted (see SkipStats)"
            )


_TYPESTORE: Any = None


def ros2_typestore() -> Any:
    """rosbags typestore (ROS 2 Humble types) for bags without embedded definitions and for writing."""
    global _TYPESTORE  # noqa: PLW0603 - built once; get_typestore costs ~0.1 s
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415

        # sensor_msgs/Image and CompressedImage are identical in every ROS 2 distro.
        _TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
    return _TYPESTORE


def _natural_key(name: str) -> list[Any]:
    # frame_2.jpg before frame_10.jpg; zero-padded names sort the same either way.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass
class _Topic:
    topic: str
    msgtype: str
    count: int
    connections: list[Any] = field(default_factory=list)


class _BagDamaged(Exception):
    """Raised by the recovery scanner where a file stops being readable."""


# --------------------------------------------------------------------------- rosbags reader


class _ReaderBag:
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

    def _topics(self) -> tuple[list[_Topic], dict[str, str]]:
        groups: dict[tuple[str, str], _Topic] = {}
        all_topics: dict[str, str] = {}
        for conn in self.reader.connections:
            all_topics.setdefault(conn.topic, conn.msgtype)
            if conn.msgtype in IMAGE_MSGTYPES:
                entry = groups.setdefault((conn.topic, conn.msgtype), _Topic(conn.topic, conn.msgtype, 0))
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


# --------------------------------------------------------------------------- MCAP recovery

_MCAP_MAGIC = b"\x89MCAP0\r\n"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _mcap_str(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise ValueError("string runs past its record")
    return bytes(buf[pos:pos + n]).decode(), pos + n


def _decompress(data: memoryview, compression: str) -> bytes:
    if compression == "":
        return bytes(data)
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # noqa: PLC0415
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]  # noqa: PLC0415
        return zstd.decompress(bytes(data))
    if compression == "lz4":
        from lz4.frame import decompress  # type: ignore[import-untyped]  # noqa: PLC0415

        return decompress(bytes(data))
    raise ValueError(f"unsupported chunk compression {compression!r}")


class _McapScan:
    """Sequential, tolerant reader for one MCAP file whose index/footer is missing or broken.

    rosbags refuses such files outright ("File end magic is invalid"), which is
    exactly what a recording cut off by a crash or a full disk looks like.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.channels: dict[int, tuple[str, str]] = {}  # id -> (topic, msgtype)
        self._schemas: dict[int, str] = {}
        with path.open("rb") as fh:
            if fh.read(8) != _MCAP_MAGIC:
                raise ValueError(f"{path} does not start with the MCAP magic bytes")

    def _inner(self, buf: memoryview) -> Iterator[tuple[int, int, memoryview]]:
        pos, end = 0, len(buf)
        out: list[tuple[int, int, memoryview]] = []
        while pos + 9 <= end:
            op = buf[pos]
            (length,) = _U64.unpack_from(buf, pos + 1)
            body = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            msg = self._record(op, body)
            if msg is not None:
                out.append(msg)
        # rosbags yields chunk contents in log-time order; do the same.
        out.sort(key=lambda m: m[1])
        return iter(out)

    def _record(self, op: int, body: memoryview) -> tuple[int, int, memoryview] | None:
        if op == 0x03:  # schema
            (sid,) = _U16.unpack_from(body, 0)
            name, _ = _mcap_str(body, 2)
            self._schemas[sid] = name
        elif op == 0x04:  # channel
            cid, sid = struct.unpack_from("<HH", body, 0)
            topic, _ = _mcap_str(body, 4)
            self.channels[cid] = (topic, self._schemas.get(sid, ""))
        elif op == 0x05:  # message
            (cid,) = _U16.unpack_from(body, 0)
            (log_time,) = _U64.unpack_from(body, 6)
            return cid, log_time, body[22:]
        return None

    def records(self, warn: Any = None) -> Iterator[tuple[int, int, memoryview]]:
        """Yield (channel id, log time, data); raise _BagDamaged where the file stops being readable."""
        size = self.path.stat().st_size
        with self.path.open("rb") as fh:
            fh.seek(8)
            while True:
                pos = fh.tell()
                head = fh.read(9)
                if len(head) < 9:
                    raise _BagDamaged(
                        f"file {self.path.name} ends at byte {size} without the MCAP footer "
                        f"(recording cut off or file truncated)"
                    )
                op = head[0]
                (length,) = _U64.unpack_from(head, 1)
                if op in (0x0F, 0x02):  # data end / footer: everything after is index
                    return
                if pos + 9 + length > size:
                    raise _BagDamaged(
                        f"file {self.path.name} is truncated: record at byte {pos} needs "
                        f"{length} bytes but the file ends at byte {size}"
                    )
                if op not in (0x03, 0x04, 0x05, 0x06):
                    fh.seek(length, os.SEEK_CUR)
                    continue
                body = memoryview(fh.read(length))
                try:
                    if op == 0x06:
                        inner = self._chunk(body)
                        yield from inner
                    else:
                        msg = self._record(op, body)
                        if msg is not None:
                            yield msg
                except (ValueError, struct.error, UnicodeDecodeError) as exc:
                    # Framing is intact (length was valid), so skip just this record.
                    if warn is not None:
                        warn(f"file {self.path.name}: record at byte {pos} is corrupt ({exc}); skipped")

    def _chunk(self, body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
        _, _, usize = struct.unpack_from("<QQQ", body, 0)
        (crc,) = _U32.unpack_from(body, 24)
        compression, pos = _mcap_str(body, 28)
        (csize,) = _U64.unpack_from(body, pos)
        pos += 8
        if pos + csize > len(body):
            raise ValueError("chunk data runs past its record")
        raw = _decompress(body[pos:pos + csize], compression)
        if len(raw) != usize:
            raise ValueError(f"chunk decompressed to {len(raw)} bytes, expected {usize}")
        if crc and zlib.crc32(raw) != crc:
            raise ValueError("chunk checksum mismatch")
        return self._inner(memoryview(raw))


class _RecoveredBag:
    """MCAP file(s) rosbags cannot open, read sequentially up to the damage."""

    def __init__(self, files: list[Path]) -> None:
        self.scans = [_McapScan(f) for f in files]
        counts: dict[tuple[str, str], int] = {}
        self.all_topics: dict[str, str] = {}
        for scan in self.scans:
            try:
                for cid, _, _ in scan.records():
                    if (key := scan.channels.get(cid)) is not None:
                        counts[key] = counts.get(key, 0) + 1
            except _BagDamaged:
                pass
            for topic, msgtype in scan.channels.values():
                self.all_topics.setdefault(topic, msgtype)
                if msgtype in IMAGE_MSGTYPES:
                    counts.setdefault((topic, msgtype), 0)
        if not self.all_topics:
            raise ValueError("no readable channel definitions")
        self.topics = sorted(
            (_Topic(t, m, n) for (t, m), n in counts.items() if m in IMAGE_MSGTYPES),
            key=lambda t: (t.topic, t.msgtype),
        )
        self.warn: Any = None

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def messages(self, topic: str, stop: int | None) -> Iterator[tuple[int, bytes, str]]:
        for scan in self.scans:
            for cid, ts, data in scan.records(self.warn):
                ch = scan.channels.get(cid)
                if ch is None or ch[0] != topic or ch[1] not in IMAGE_MSGTYPES:
                    continue
                if stop is not None and ts >= stop:
                    continue
                yield ts, data, ch[1]

    def deserialize(self, raw: Any, msgtype: str) -> Any:
        return ros2_typestore().deserialize_cdr(raw, msgtype)


# --------------------------------------------------------------------------- opening


def _storage_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BAG_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _is_bag_dir(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or bool(_storage_files(path))


def _open_bag(bag_path: str | os.PathLike[str], warner: _Warner) -> _ReaderBag | _RecoveredBag:
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
            bag = _ReaderBag(paths)
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
            recovered = _RecoveredBag(mcaps)
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
    return text if isinstance(exc, _BagDamaged) else f"{type(exc).__name__}: {text}"


def _fmt_topics(topics: Sequence[_Topic]) -> str:
    if not topics:
        return "(none)"
    return ", ".join(f'{t.topic} [{t.msgtype.rsplit("/", 1)[-1]}, {t.count} msgs]' for t in topics)


def _select_topic(
    bag: _ReaderBag | _RecoveredBag, src: str, topic: str | None, warner: _Warner
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
    per_topic: dict[str, int] = {}
    has_raw: set[str] = set()
    for t in topics:
        per_topic[t.topic] = per_topic.get(t.topic, 0) + t.count
        if t.msgtype == IMAGE_MSGTYPES[0]:
            has_raw.add(t.topic)
    if max(per_topic.values()) == 0:
        raise ValueError(f"Bag {src!r}: no image topic has any message; image topics: {_fmt_topics(topics)}")
    # Most messages wins; on a tie a raw Image beats .../compressed (lossless, no JPEG decode).
    best = sorted(per_topic, key=lambda n: (-per_topic[n], n not in has_raw, n))[0]
    bases = {n.removesuffix("/compressed") for n, c in per_topic.items() if c}
    if len(bases) > 1:
        warner.warn(
            f"Bag {src!r} has several image topics ({_fmt_topics(topics)}); using {best!r} "
            f"(most messages); pass topic= to choose another"
        )
    return best, per_topic[best]


def list_image_topics(bag_path: str | os.PathLike[str], *, logger: Any = None) -> list[tuple[str, str, int]]:
    """(topic, msgtype, message count) of every Image / CompressedImage topic, sorted by topic.

    Raises:
        ValueError: the path is not a bag or cannot be opened.
    """
    bag = _open_bag(bag_path, _Warner(SkipStats(), logger))
    return [(t.topic, t.msgtype, t.count) for t in bag.topics]


def _header_stamp_ns(msg: Any) -> int:
    try:
        stamp = msg.header.stamp
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    except AttributeError:
        return 0


def _check_common(stride: int, max_frames: int | None, min_interval_s: float) -> None:
    if int(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and int(max_frames) < 0:
        raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
    if not float(min_interval_s) >= 0.0:
        raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")


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
    _check_common(stride, max_frames, min_interval_s)
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ValueError(f"end_ns ({end_ns}) must be greater than start_ns ({start_ns})")
    stats = stats if stats is not None else SkipStats()
    warner = _Warner(stats, logger)
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
    bag: _ReaderBag | _RecoveredBag,
    src: str,
    topic: str,
    total: int,
    start_ns: int | None,
    end_ns: int | None,
    stride: int,
    min_interval_ns: int,
    max_frames: int | None,
    stats: SkipStats,
    warner: _Warner,
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


# --------------------------------------------------------------------------- folder frames


def _folder_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files = [
        p for p in folder.iterdir()
        # Dot files are editor/OS droppings (e.g. macOS "._0001.jpg"), not frames.
        if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def iter_folder_frames(
    folder: str | os.PathLike[str],
    *,
    stride: int = 1,
    min_interval_s: float = 0.0,
    max_frames: int | None = None,
    stats: SkipStats | None = None,
    logger: Any = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    fps: float = 10.0,
) -> Iterator[Frame]:
    """Stream RGB frames from the image files of a folder (not recursive), in natural file-name order.

    ``stamp_ns`` is ``round(index * 1e9 / fps)``: deterministic, unlike file
    mtimes which copying changes. Unreadable files are skipped, counted as
    ``decode_error`` and warned about.

    Raises (on the call):
        ValueError: not a folder, no matching image files, bad arguments.
    """
    _check_common(stride, max_frames, min_interval_s)
    if not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"Image folder {str(path)!r} does not exist or is not a directory")
    files = _folder_files(path, extensions)
    if not files:
        raise ValueError(
            f'Image folder {str(path)!r} has no {"/".join(extensions)} files; pass a folder of '
            f"images or a rosbag2 bag"
        )
    stats = stats if stats is not None else SkipStats()
    return _folder_frames(
        files, str(folder), int(stride), round(float(min_interval_s) * 1e9), max_frames,
        float(fps), stats, _Warner(stats, logger),
    )


def _folder_frames(
    files: list[Path],
    src: str,
    stride: int,
    min_interval_ns: int,
    max_frames: int | None,
    fps: float,
    stats: SkipStats,
    warner: _Warner,
) -> Iterator[Frame]:
    yielded = 0
    last_emit: int | None = None
    for index, file in enumerate(files):
        if max_frames is not None and yielded >= max_frames:
            stats.max_count += len(files) - index
            return
        if index % stride:
            stats.stride += 1
            continue
        stamp = round(index * 1e9 / fps)
        if last_emit is not None and stamp - last_emit < min_interval_ns:
            stats.min_interval += 1
            continue
        try:
            # np.fromfile + imdecode instead of imread: handles non-ASCII paths and reports OSErrors.
            data = np.fromfile(file, dtype=np.uint8)
            bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
            reason = "empty file" if not data.size else "not a decodable image"
        except (OSError, cv2.error) as exc:
            bgr, reason = None, str(exc).strip()
        if bgr is None:
            stats.decode_error += 1
            warner.item(f"Image file {str(file)!r} could not be read ({reason}); skipped")
            continue
        last_emit = stamp
        yielded += 1
        stats.yielded += 1
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        yield Frame(rgb=rgb, source=src, index=index, stamp_ns=stamp, topic=None, name=file.name)


# --------------------------------------------------------------------------- dispatch

_BAG_ONLY = ("topic", "start_ns", "end_ns")
_FOLDER_ONLY = ("extensions", "fps")


def iter_frames(path: str | os.PathLike[str], **kw: Any) -> Iterator[Frame]:
    """Frames from a bag (a directory with metadata.yaml or .mcap/.db3 files, or such a file) or a folder.

    Keyword arguments are those of :func:`iter_bag_frames` / :func:`iter_folder_frames`;
    options of the other kind are accepted when None (so one call site can serve both).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{str(p)!r} does not exist; pass a rosbag2 bag or a folder of images")
    if p.is_file():
        if p.suffix.lower() in BAG_SUFFIXES:
            return iter_bag_frames(p, **_only(kw, _FOLDER_ONLY, "a bag"))
        raise ValueError(
            f'{str(p)!r} is neither a bag ({" / ".join(BAG_SUFFIXES)} file or bag directory) nor '
            f"a folder of images"
        )
    if _is_bag_dir(p):
        return iter_bag_frames(p, **_only(kw, _FOLDER_ONLY, "a bag"))
    return iter_folder_frames(p, **_only(kw, _BAG_ONLY, "an image folder"))


def _only(kw: dict[str, Any], foreign: Sequence[str], kind: str) -> dict[str, Any]:
    out = dict(kw)
    for key in foreign:
        if key in out:
            if out[key] is not None:
                raise ValueError(f"Option {key}={out[key]!r} does not apply to {kind}")
            del out[key]
    return out
