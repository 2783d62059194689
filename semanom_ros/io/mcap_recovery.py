"""Hand-written MCAP recovery: read an MCAP file whose index or footer is missing or broken.

rosbags refuses such files outright ("File end magic is invalid"), which is exactly what a
recording cut off by a crash or a full disk looks like. :class:`RecoveredMcapBag` reads the
records sequentially up to the damage and offers the same interface as the rosbags-backed
reader in :mod:`semanom_ros.io.bags` (topics, messages, deserialize).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .frame_types import IMAGE_MSGTYPES, BagTopic

__all__ = ["BagDamaged", "McapScan", "RecoveredMcapBag"]


class BagDamaged(Exception):
    """Raised by the recovery scanner where a file stops being readable."""


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


class McapScan:
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
        """Yield (channel id, log time, data); raise BagDamaged where the file stops being readable."""
        size = self.path.stat().st_size
        with self.path.open("rb") as fh:
            fh.seek(8)
            while True:
                pos = fh.tell()
                head = fh.read(9)
                if len(head) < 9:
                    raise BagDamaged(
                        f"file {self.path.name} ends at byte {size} without the MCAP footer "
                        f"(recording cut off or file truncated)"
                    )
                op = head[0]
                (length,) = _U64.unpack_from(head, 1)
                if op in (0x0F, 0x02):  # data end / footer: everything after is index
                    return
                if pos + 9 + length > size:
                    raise BagDamaged(
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


class RecoveredMcapBag:
    """MCAP file(s) rosbags cannot open, read sequentially up to the damage.

    ``typestore`` (rosbags) deserializes the messages.
    """

    def __init__(self, files: list[Path], typestore: Any) -> None:
        self.typestore = typestore
        self.scans = [McapScan(f) for f in files]
        counts: dict[tuple[str, str], int] = {}
        self.all_topics: dict[str, str] = {}
        for scan in self.scans:
            try:
                for cid, _, _ in scan.records():
                    if (key := scan.channels.get(cid)) is not None:
                        counts[key] = counts.get(key, 0) + 1
            except BagDamaged:
                pass
            for topic, msgtype in scan.channels.values():
                self.all_topics.setdefault(topic, msgtype)
                if msgtype in IMAGE_MSGTYPES:
                    counts.setdefault((topic, msgtype), 0)
        if not self.all_topics:
            raise ValueError("no readable channel definitions")
        self.topics = sorted(
            (BagTopic(t, m, n) for (t, m), n in counts.items() if m in IMAGE_MSGTYPES),
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
        return self.typestore.deserialize_cdr(raw, msgtype)
