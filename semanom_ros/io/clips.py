"""Anomaly clips on disk: rosbag2 directories (MCAP by default) named by the onset stamp, under a quota.

:class:`ClipBagWriter` writes already serialised (CDR) messages of any ROS 2 type rosbags knows
(vision_msgs included, :mod:`semanom_ros.io.vision_types`) into one clip;
:func:`enforce_quota` deletes the oldest clips of a folder until the folder fits its quota
(a dash-cam policy: the newest evidence is kept). The ring buffer and the timing around an onset
live in :mod:`semanom_ros.workflows.clip_recorder`.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

from .vision_types import vision_typestore

__all__ = ["CLIP_PREFIX", "ClipBagWriter", "clip_dirs", "clip_name", "dir_bytes", "enforce_quota"]

CLIP_PREFIX = "anomaly_"
_STORAGES = ("mcap", "sqlite3")


def clip_name(stamp_ns: int, prefix: str = CLIP_PREFIX) -> str:
    """'anomaly_20231114T221320.250Z' for an onset stamped 1700000000.25 s (UTC, sortable, no colons)."""
    moment = _dt.datetime.fromtimestamp(int(stamp_ns) / 1e9, tz=_dt.timezone.utc)
    return f"{prefix}{moment.strftime('%Y%m%dT%H%M%S')}.{moment.microsecond // 1000:03d}Z"


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clip_dirs(folder: Path, prefix: str = CLIP_PREFIX) -> list[Path]:
    """The clips in ``folder``, oldest first (by name: names sort by onset stamp)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix))


def enforce_quota(folder: Path, quota_bytes: int, reserve_bytes: int = 0, prefix: str = CLIP_PREFIX,
                  keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete the oldest clips until the clips in ``folder`` plus ``reserve_bytes`` fit ``quota_bytes``.

    Only directories named ``prefix*`` are touched; ``keep`` (e.g. the clip being written) never
    goes. Returns the deleted paths.
    """
    clips = [(p, dir_bytes(p)) for p in clip_dirs(folder, prefix) if p not in keep]
    total = sum(size for _, size in clips) + sum(dir_bytes(p) for p in keep) + int(reserve_bytes)
    deleted = []
    for path, size in clips:
        if total <= quota_bytes:
            break
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
        total -= size
    return deleted


class ClipBagWriter:
    """One clip: a rosbag2 directory written with rosbags from (topic, msgtype, stamp_ns, CDR bytes)."""

    def __init__(self, path: Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: PLC0415

        if storage not in _STORAGES:
            raise ValueError(f"clip storage must be one of {_STORAGES}, got {storage!r}")
        if path.exists():
            raise FileExistsError(f"clip {path} exists; clip names must be unique")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._typestore = vision_typestore()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(path, version=8, storage_plugin=plugin)
        self._writer.open()
        self._connections: dict[tuple[str, str], Any] = {}
        self.messages = 0
        self.bytes = 0
        self.skipped_types: set[str] = set()

    def write(self, topic: str, msgtype: str, stamp_ns: int, raw: bytes) -> bool:
        """Append one serialised message; False (and nothing written) when rosbags does not know its type."""
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            if msgtype not in self._typestore.fielddefs:
                self.skipped_types.add(msgtype)
                return False
            conn = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self._connections[key] = conn
        self._writer.write(conn, int(stamp_ns), raw)
        self.messages += 1
        self.bytes += len(raw)
        return True

    def close(self) -> None:
        """Finish the file and write metadata.yaml (the clip is complete and readable after this)."""
        self._writer.close()
