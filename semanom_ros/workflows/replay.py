"""Replay: run the monitor over every frame of a bag, offline, and write a bag of its outputs.

The output is a rosbag2 directory (MCAP storage, or sqlite3 with ``storage="sqlite3"``: the
storage plugin every ROS 2 distro ships, so Humble plays it without the MCAP plugin) holding the
input image messages copied through byte for byte and the monitor's topics under a namespace
(default ``/semanom_monitor``); the messages are the node's own
(:func:`semanom_ros.io.messages.build_output_messages`) and carry the input header; they are
written at the input message's bag timestamp. ``<ns>/instances`` (vision_msgs/Detection2DArray:
the image-level result and one detection per region) is always written, whether or not
vision_msgs is installed: its definitions come from :mod:`semanom_ros.io.vision_types`. Every
frame is processed (nothing is dropped, nothing depends on timing), so two replays of one bag are
identical apart from wall-clock metadata.
"""
from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semanom_ros.core import Monitor, PipelineConfig
from semanom_ros.io.bags import iter_bag_frames
from semanom_ros.io.frame_types import IMAGE_MSGTYPES, SkipStats
from semanom_ros.io.serialization import canonical_cdr, rclpy_header
from semanom_ros.io.vision_types import DETECTION2D_ARRAY, detection_array, vision_typestore

from .eval_data import WarningSink

__all__ = ["DEFAULT_NAMESPACE", "STORAGES", "ReplayError", "ReplaySummary", "output_paths", "replay_bag"]

_log = logging.getLogger("semanom_ros.replay")

DEFAULT_NAMESPACE = "/semanom_monitor"
STORAGES = {"mcap": ".mcap", "sqlite3": ".db3"}  # rosbag2 storage plugin -> file suffix


class ReplayError(RuntimeError):
    """The replay cannot be done as asked; the message says why and what would fix it."""


@dataclass
class ReplaySummary:
    """What a replay wrote: the output bag, the input topic and per-topic message counts."""

    bag_dir: Path
    storage_file: Path  # the .mcap or .db3 file inside bag_dir
    topic: str
    input_messages: int = 0
    frames: int = 0
    anomalous: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def mcap_file(self) -> Path:
        """The storage file (kept under its old name; it is a .db3 file with sqlite3 storage)."""
        return self.storage_file


def output_paths(output: str | Path, storage: str = "mcap") -> tuple[Path, Path]:
    """Return (bag directory, storage file) for ``-o``.

    ``X.mcap`` and ``X`` both give ``X/X.mcap`` (sqlite3: ``X.db3`` and ``X`` give ``X/X.db3``).
    """
    if storage not in STORAGES:
        raise ReplayError(f"storage {storage!r} is not one of {', '.join(STORAGES)}")
    out = Path(output)
    bag_dir = out.with_suffix("") if out.suffix.lower() in STORAGES.values() else out
    return bag_dir, bag_dir / f"{bag_dir.name}{STORAGES[storage]}"


def _storage_paths(bag: Path) -> list[Path]:
    if bag.is_dir() and not (bag / "metadata.yaml").is_file():
        files = sorted(p for p in bag.iterdir() if p.suffix.lower() in (".mcap", ".db3"))
        if files:
            return files
    return [bag]


def replay_bag(
    bag: str | Path,
    bank: str | Path,
    output: str | Path,
    config: PipelineConfig,
    *,
    topic: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    all_topics: bool = False,
    overlay: bool = True,
    max_frames: int | None = None,
    overwrite: bool = False,
    compress: bool = True,
    storage: str = "mcap",
    progress: bool = True,
    sink: WarningSink | None = None,
    monitor: Monitor | None = None,
) -> ReplaySummary:
    """Process every frame of ``topic`` in ``bag`` and write the input and output topics to a bag.

    ``storage`` is ``mcap`` (zstd chunks unless ``compress`` is False) or ``sqlite3`` (uncompressed).
    """
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from tqdm import tqdm

    try:
        from semanom_ros.io.messages import build_output_messages, detection_rows
    except ImportError as exc:
        raise ReplayError(
            f"semanom_ros.io.messages is not importable ({exc}); the replay builds the node's messages with it"
        ) from None

    sink = sink or WarningSink()
    bag = Path(bag)
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    bag_dir, storage_file = output_paths(output, storage)
    if bag_dir.resolve() == bag.resolve() or bag.resolve() in bag_dir.resolve().parents:
        raise ReplayError(f"output {bag_dir} would be inside the input bag {bag}; choose another -o")
    if bag_dir.exists():
        if not overwrite:
            raise ReplayError(f"output {bag_dir} exists; remove it or pass --overwrite")
        if not (bag_dir / "metadata.yaml").is_file() and any(bag_dir.iterdir()):
            raise ReplayError(f"output {bag_dir} exists and is not a rosbag2 directory; not overwriting it")
        shutil.rmtree(bag_dir)
    bag_dir.parent.mkdir(parents=True, exist_ok=True)

    stats = SkipStats()
    try:
        frames = iter_bag_frames(bag, topic, max_frames=max_frames, stats=stats, logger=sink)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    first = next(frames, None)
    if first is None:
        raise ReplayError(f"bag {bag} gave no frames on {topic or 'its image topic'} ({stats.summary()})")
    topic = str(first.topic)
    monitor = monitor or Monitor(config, bank)
    typestore = vision_typestore()  # the ROS 2 types plus vision_msgs, for the detections
    summary = ReplaySummary(bag_dir=bag_dir, storage_file=storage_file, topic=topic)

    def frame_stream():
        yield first
        yield from frames

    frame_iter = frame_stream()
    next_frame = next(frame_iter, None)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(bag_dir, version=8, storage_plugin=plugin)
    if compress and storage == "mcap":
        # zstd MCAP chunks: score maps and label images are mostly smooth or empty (~5x smaller); Foxglove and
        # the rosbag2 MCAP plugin read them transparently.
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    out_conns: dict[str, Any] = {}
    unsupported: set[str] = set()
    try:
        reader = AnyReader(_storage_paths(bag), default_typestore=typestore)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises many types; all mean "cannot open"
        raise ReplayError(
            f"cannot open bag {bag} to copy its messages ({exc}); "
            "a damaged MCAP file can be rebuilt with `mcap recover`"
        ) from None
    try:
        with writer:
            image_conns = [c for c in reader.connections if c.topic == topic and c.msgtype in IMAGE_MSGTYPES]
            copy_conns = list(reader.connections) if all_topics else image_conns
            in_conns: dict[int, Any] = {}
            for conn in copy_conns:
                kwargs: dict[str, Any] = {"serialization_format": conn.ext.serialization_format}
                if conn.msgdef.data and conn.digest:
                    kwargs.update(msgdef=conn.msgdef.data, rihs01=conn.digest)
                else:
                    kwargs["typestore"] = reader.typestore
                in_conns[conn.id] = writer.add_connection(conn.topic, conn.msgtype, **kwargs)
            total = sum(c.msgcount for c in image_conns)
            if max_frames is not None:
                total = min(total, int(max_frames))
            image_ids = {c.id for c in image_conns}
            ordinal = 0
            bar = tqdm(total=total, desc="semanom-replay", unit="frame", disable=not progress, file=sys.stderr)
            try:
                for conn, timestamp, raw in reader.messages(connections=copy_conns):
                    if conn.id not in image_ids:
                        writer.write(in_conns[conn.id], timestamp, raw)
                        continue
                    index, ordinal = ordinal, ordinal + 1
                    if max_frames is not None and next_frame is None and summary.frames >= max_frames:
                        if not all_topics:
                            break
                        continue
                    writer.write(in_conns[conn.id], timestamp, raw)
                    summary.input_messages += 1
                    if next_frame is None or next_frame.index != index:
                        continue  # a message the frame reader skipped (decode error): copied, no outputs
                    frame, next_frame = next_frame, next(frame_iter, None)
                    input_msg = reader.deserialize(raw, conn.msgtype)
                    stamp = int(input_msg.header.stamp.sec) * 1_000_000_000 + int(input_msg.header.stamp.nanosec)
                    if frame.stamp_ns != (stamp or timestamp):
                        raise ReplayError(
                            f"{topic} message #{index}: decoded frame (stamp {frame.stamp_ns}) and copied message "
                            f"(stamp {stamp or timestamp}) are out of step; please report this bag"
                        )
                    header = rclpy_header(input_msg.header)
                    result = monitor.process(frame.rgb)
                    overlay_bgr = monitor.overlay(frame.rgb, result) if overlay else None
                    # The detections are built as rosbags messages (vision_msgs may not be importable).
                    messages = build_output_messages(result, frame.rgb, header, overlay_bgr=overlay_bgr,
                                                     detections=False)
                    records = [(key, *canonical_cdr(msg)) for key, msg in messages.items()]
                    detections = detection_array(detection_rows(result, frame.rgb.shape[:2]), input_msg.header)
                    records.insert(-2, ("instances", DETECTION2D_ARRAY,
                                        bytes(typestore.serialize_cdr(detections, DETECTION2D_ARRAY))))
                    for key, msgtype, raw_out in records:
                        name = f"{ns}/{key}"
                        if name not in out_conns:
                            if msgtype not in typestore.fielddefs:
                                if name not in unsupported:
                                    unsupported.add(name)
                                    sink.warning(f"{name}: {msgtype} is unknown to rosbags' typestore; not written")
                                continue
                            out_conns[name] = writer.add_connection(name, msgtype, typestore=typestore)
                        writer.write(out_conns[name], timestamp, raw_out)
                        summary.counts[name] = summary.counts.get(name, 0) + 1
                    summary.frames += 1
                    summary.anomalous += int(result.is_anomalous)
                    bar.update(1)
            finally:
                bar.close()
    except BaseException:
        shutil.rmtree(bag_dir, ignore_errors=True)  # never leave half a bag behind
        raise
    finally:
        reader.close()
    summary.skipped = stats.summary()
    summary.warnings = list(sink.messages)
    if summary.frames == 0:
        sink.warning(f"bag {bag}: no frame of {topic} was processed ({stats.summary()})")
    return summary
