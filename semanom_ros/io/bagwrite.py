"""Write rosbag2 image bags with rosbags (for tests, benchmarks and demo data; no ROS install needed)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .bags import ros2_typestore
from .frame_types import Frame

__all__ = ["write_image_bag", "make_image_msg", "make_compressed_msg"]

_STORAGES = ("mcap", "sqlite3")


def _header(stamp_ns: int, frame_id: str) -> Any:
    ts = ros2_typestore()
    time_cls = ts.types["builtin_interfaces/msg/Time"]
    header_cls = ts.types["std_msgs/msg/Header"]
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=frame_id)


def make_image_msg(
    data: bytes | np.ndarray,
    *,
    height: int,
    width: int,
    encoding: str,
    step: int,
    stamp_ns: int = 0,
    frame_id: str = "camera",
    is_bigendian: int = 0,
) -> Any:
    """A rosbags sensor_msgs/Image with exactly these fields (not validated: tests build bad ones)."""
    cls = ros2_typestore().types["sensor_msgs/msg/Image"]
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), np.uint8)
    return cls(
        header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=is_bigendian, step=step, data=buf,
    )


def make_compressed_msg(
    data: bytes, fmt: str = "jpeg", *, stamp_ns: int = 0, frame_id: str = "camera"
) -> Any:
    """A rosbags sensor_msgs/CompressedImage carrying ``data`` verbatim."""
    cls = ros2_typestore().types["sensor_msgs/msg/CompressedImage"]
    return cls(header=_header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(bytes(data), np.uint8))


def _to_msg(rgb: np.ndarray, compressed: bool, fmt: str, quality: int, stamp_ns: int, frame_id: str) -> Any:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(
            f"write_image_bag: frames must be uint8 (H, W, 3) RGB or (H, W) gray arrays; "
            f"got {arr.dtype.name} {arr.shape}"
        )
    if compressed:
        src = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
        ext = ".png" if fmt == "png" else ".jpg"
        params = [] if fmt == "png" else [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        ok, enc = cv2.imencode(ext, src, params)
        if not ok:
            raise ValueError(f"write_image_bag: OpenCV could not encode a {arr.shape} frame as {fmt}")
        return make_compressed_msg(enc.tobytes(), fmt, stamp_ns=stamp_ns, frame_id=frame_id)
    encoding = "rgb8" if arr.ndim == 3 else "mono8"
    height, width = arr.shape[:2]
    channels = 3 if arr.ndim == 3 else 1
    return make_image_msg(
        np.ascontiguousarray(arr), height=height, width=width, encoding=encoding,
        step=width * channels, stamp_ns=stamp_ns, frame_id=frame_id,
    )


def write_image_bag(
    path: str | os.PathLike[str],
    frames_or_arrays: Iterable[Any],
    topic: str = "/camera/image_raw",
    compressed: bool = False,
    *,
    storage: str = "mcap",
    fps: float = 10.0,
    frame_id: str = "camera",
    fmt: str = "jpeg",
    quality: int = 90,
    start_ns: int = 1_700_000_000_000_000_000,
    version: int = 8,
    zstd_chunks: bool = False,
) -> Path:
    """Write ``frames_or_arrays`` to a new rosbag2 bag directory ``path`` on one image topic; return ``path``.

    Items may be RGB uint8 arrays (or (H, W) gray), :class:`Frame` objects
    (their ``stamp_ns`` is used), rosbags Image/CompressedImage messages
    (serialized as they are), or ``bytes`` (written verbatim as the CDR
    payload, e.g. to plant a corrupt message). Arrays and messages get receive
    time ``start_ns + i * 1e9 / fps``; arrays also get that header stamp.
    Compressed topics use ``fmt`` ('jpeg' or 'png'). ``version`` 8 is read by
    rosbag2 Iron and newer, 9 by Jazzy and newer. ``zstd_chunks`` compresses
    MCAP chunks (storage-level compression).
    """
    from rosbags.rosbag2 import (  # noqa: PLC0415
        CompressionFormat,
        CompressionMode,
        StoragePlugin,
        Writer,
    )

    if storage not in _STORAGES:
        raise ValueError(f"storage must be one of {_STORAGES}, got {storage!r}")
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    out = Path(path)
    if out.exists():
        raise FileExistsError(f"{out} exists; write_image_bag only creates new bag directories")
    typestore = ros2_typestore()
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    if zstd_chunks and storage != "mcap":
        raise ValueError("zstd_chunks applies to storage='mcap' only")
    writer = Writer(out, version=version, storage_plugin=plugin)
    if zstd_chunks:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conn = writer.add_connection(topic, msgtype, typestore=typestore)
        for i, item in enumerate(frames_or_arrays):
            ts = start_ns + round(i * 1e9 / fps)
            if isinstance(item, Frame):
                ts = int(item.stamp_ns)
                raw: Any = typestore.serialize_cdr(
                    _to_msg(item.rgb, compressed, fmt, quality, ts, frame_id), msgtype,
                )
            elif isinstance(item, (bytes, bytearray, memoryview)):
                raw = bytes(item)
            elif isinstance(item, np.ndarray):
                raw = typestore.serialize_cdr(_to_msg(item, compressed, fmt, quality, ts, frame_id), msgtype)
            else:
                raw = typestore.serialize_cdr(item, getattr(item, "__msgtype__", msgtype))
            writer.write(conn, ts, raw)
    return out
