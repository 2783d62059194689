"""The monitor node's output side: publishers and QoS, the debounced alarm, ~/events, anomaly clips.

Also the /diagnostics statuses of these (``semanom: <node>/outputs`` and ``semanom: <node>/alarm``).

Outputs are reliable with depth ``output_depth`` (default 5): measured at 30 Hz over localhost, a
depth-1 reliable writer replaced big images before a reliable reader had acknowledged them (overlay
48 of 58 frames), while a depth-5 one delivers every frame to a reliable reader and whatever a
best-effort reader's transport takes. Messages are built only for topics somebody subscribes to
(plus the ones the clip recorder keeps), so an unwatched heat map or JPEG costs nothing.

``~/events`` (std_msgs/String, JSON, reliable + transient local, depth 20) carries the alarm's
onsets and offsets: rare, readable with ``ros2 topic echo``, recorded by any bag, and a late
subscriber still gets the recent ones (so the current alarm state). The JSON holds the frame's
stamp, so an event can be matched with the camera frame that caused it.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from semanom_ros.core.debounce import AlarmEvent, Debouncer
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.result import AnomalyResult
from semanom_ros.io.messages import build_output_messages, output_message_types
from semanom_ros.workflows.clip_recorder import ClipRecord, ClipRecorder, message_nbytes
from semanom_ros.io.serialization import ros_msgtype

from .output_params import CLIP_TOPIC_CHOICES

__all__ = ["OVERLAY_KEYS", "OutputStage", "event_json", "output_qos"]

OVERLAY_KEYS = frozenset({"overlay", "overlay/compressed"})
ALWAYS_BUILT = frozenset({"score", "is_anomalous"})  # tiny; the alarm needs the decision anyway
EVENTS_QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def output_qos(reliability: str, depth: int) -> QoSProfile:
    """Return the QoS of the output topics (keep last ``depth``, volatile)."""
    if reliability not in ("reliable", "best_effort"):
        raise ConfigError(f"output_reliability: {reliability!r} is not one of reliable, best_effort")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=int(depth), reliability=policy)


def stamp_ns_of(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def event_json(event: AlarmEvent, frame_id: str, threshold: float, clip: str | None) -> str:
    """The ~/events payload of one alarm change."""
    sec, nanosec = divmod(event.stamp_ns, 1_000_000_000)
    return json.dumps({
        "event": event.kind,
        "stamp": {"sec": sec, "nanosec": nanosec},
        "stamp_ns": event.stamp_ns,
        "frame_id": frame_id,
        "score": round(event.score, 6),
        "threshold": round(float(threshold), 6),
        "anomalous_in_window": event.anomalous_in_window,
        "window": event.window,
        "onset_stamp_ns": event.onset_stamp_ns,
        "clip": clip,
    }, sort_keys=True)


class OutputStage:
    """Everything between an AnomalyResult and the wire, for one configured node.

    ``node`` creates the lifecycle publishers; ``param(name)`` reads a parameter's current value
    (runtime ones are read per frame, so live changes need no callback here).
    """

    def __init__(self, node: Any, param: Callable[[str], Any]) -> None:
        self._node = node
        self._param = param
        self._publishers: dict[str, Any] = {}
        self._events_pub: Any = None
        self.debouncer = Debouncer()
        self.recorder: ClipRecorder | None = None
        self._clip_keys: frozenset[str] = frozenset()
        self._record_input = False
        self._record_events = False
        self._lock = threading.Lock()
        self.published: dict[str, int] = {}
        self.events: list[str] = []  # recent event payloads (diagnostics, tests)
        self.last_event = ""

    # -- lifecycle ---------------------------------------------------------------------------------------
    def configure(self) -> None:
        """Create the publishers, the alarm and the clip recorder from the parameters (ConfigError if bad)."""
        qos = output_qos(str(self._param("output_reliability")), int(self._param("output_depth")))
        onset, window, release = (int(self._param(n)) for n in
                                  ("alarm_onset_frames", "alarm_window", "alarm_release_frames"))
        if onset > window:
            raise ConfigError(f"alarm_onset_frames: {onset} is more than alarm_window {window}; "
                              "set alarm_onset_frames <= alarm_window")
        self.debouncer = Debouncer(onset, window, release)
        clip_topics = [str(t) for t in (self._param("clip_topics") or [])]
        unknown = sorted(set(clip_topics) - set(CLIP_TOPIC_CHOICES))
        if unknown:
            raise ConfigError(f"clip_topics: {unknown} unknown; choose from {', '.join(CLIP_TOPIC_CHOICES)}")
        clip_dir = str(self._param("clip_dir")).strip()
        recorder = None
        if clip_dir:
            try:
                Path(clip_dir).expanduser().mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"clip_dir: cannot create {clip_dir} ({exc}); choose a writable folder") from None
            recorder = ClipRecorder(
                clip_dir, pre_s=float(self._param("clip_pre_s")), post_s=float(self._param("clip_post_s")),
                quota_bytes=int(self._param("clip_quota_mb")) << 20,
                buffer_bytes=int(self._param("clip_buffer_mb")) << 20,
            )
        for key, msg_type in output_message_types().items():
            self._publishers[key] = self._node.create_lifecycle_publisher(msg_type, f"~/{key}", qos)
        self._events_pub = self._node.create_lifecycle_publisher(String, "~/events", EVENTS_QOS)
        self.recorder = recorder
        self._clip_keys = frozenset(clip_topics) - {"input", "events"}
        self._record_input = "input" in clip_topics
        self._record_events = "events" in clip_topics
        self.published = {key: 0 for key in self._publishers}

    def deactivate(self) -> None:
        """Forget the alarm's history (a paused camera must not finish an old onset window)."""
        self.debouncer.reset()

    def release(self) -> None:
        """Destroy the publishers and finish the open clip."""
        for pub in [*self._publishers.values(), self._events_pub]:
            if pub is not None:
                self._node.destroy_lifecycle_publisher(pub)
        self._publishers.clear()
        self._events_pub = None
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()

    # -- per frame ---------------------------------------------------------------------------------------
    def wanted_keys(self, publish_overlay: bool = True, publish_score_map: bool = True) -> set[str]:
        """Keys worth building now: topics with a subscriber, the ones clips keep, score and flag."""
        keys = {k for k, pub in self._publishers.items() if pub.get_subscription_count() > 0}
        keys |= ALWAYS_BUILT
        if self.recorder is not None:
            keys |= self._clip_keys
        if not publish_overlay:
            keys -= OVERLAY_KEYS
        if not publish_score_map:
            keys.discard("score_map")
        return keys

    def publish(self, result: AnomalyResult, rgb: np.ndarray, input_msg: Any, overlay_bgr: np.ndarray | None,
                keys: set[str]) -> dict[str, Any]:
        """Build and publish one frame's messages, update the alarm (and ~/events), feed the clip recorder."""
        header = input_msg.header
        messages = build_output_messages(
            result, rgb, header, overlay_bgr=overlay_bgr, keys=keys,
            max_output_pixels=int(self._param("max_published_pixels")), jpeg_quality=int(self._param("jpeg_quality")),
        )
        for key, msg in messages.items():
            pub = self._publishers.get(key)
            if pub is not None:
                pub.publish(msg)
                self.published[key] = self.published.get(key, 0) + 1
        stamp = stamp_ns_of(header)
        event = self.debouncer.update(result.is_anomalous, stamp, result.score)
        recorder = self.recorder
        records: list[ClipRecord] = []
        if recorder is not None:
            if self._record_input:
                records.append(ClipRecord(self._node.input_topic, ros_msgtype(input_msg), stamp, input_msg,
                                          message_nbytes(input_msg)))
            ns = self._node.get_fully_qualified_name()
            records += [ClipRecord(f"{ns}/{key}", ros_msgtype(msg), stamp, msg, message_nbytes(msg))
                        for key, msg in messages.items() if key in self._clip_keys]
            recorder.add(records)
        if event is not None:
            clip = None
            if recorder is not None and event.kind == "onset":
                path = recorder.trigger(event.stamp_ns)
                clip = str(path) if path is not None else None
            payload = String(data=event_json(event, str(header.frame_id), result.threshold, clip))
            if self._events_pub is not None:
                self._events_pub.publish(payload)
            with self._lock:
                self.last_event = payload.data
                self.events = (self.events + [payload.data])[-20:]
            if recorder is not None and self._record_events:
                ns = self._node.get_fully_qualified_name()
                recorder.add([ClipRecord(f"{ns}/events", "std_msgs/msg/String", stamp, payload, 256)])
        return messages

    # -- diagnostics -------------------------------------------------------------------------------------
    def statuses(self, node_name: str, hardware_id: str) -> list[DiagnosticStatus]:
        """``semanom: <node>/outputs`` and ``semanom: <node>/alarm`` (empty before configure)."""
        if not self._publishers:
            return []
        outputs = {
            "qos": f"{self._param('output_reliability')}, depth {self._param('output_depth')}",
            "max_published_pixels": str(self._param("max_published_pixels")),
        }
        for key, pub in self._publishers.items():
            outputs[f"{key} subscribers"] = str(pub.get_subscription_count())
            outputs[f"{key} published"] = str(self.published.get(key, 0))
        status = [DiagnosticStatus(level=DiagnosticStatus.OK, name=f"semanom: {node_name}/outputs",
                                   message=f"{sum(1 for p in self._publishers.values() if p.get_subscription_count())}"
                                   " topics subscribed", hardware_id=hardware_id,
                                   values=[KeyValue(key=k, value=v) for k, v in outputs.items()])]
        d = self.debouncer
        alarm = {
            "alarm": "raised" if d.active else "clear",
            "onsets": str(d.onsets),
            "debounce": f"onset {d.onset_frames} of {d.window} frames, release after {d.release_frames}",
            "last_event": self.last_event,
        }
        level, message = DiagnosticStatus.OK, "alarm raised" if d.active else "alarm clear"
        recorder = self.recorder
        if recorder is not None:
            rs = recorder.stats
            add_us = np.percentile(list(rs.add_s), 95) * 1e6 if rs.add_s else float("nan")
            write_ms = np.percentile(list(rs.write_s), 50) * 1e3 if rs.write_s else float("nan")
            alarm.update({
                "clip_dir": str(recorder.folder), "clips_written": str(rs.clips_written),
                "clips_deleted_for_quota": str(rs.clips_deleted), "clip_recording": str(recorder.recording),
                "last_clip": rs.last_clip, "clip_records_dropped": str(rs.records_dropped),
                "clip_truncated": str(rs.truncated), "clip_errors": str(rs.errors),
                "clip_add_p95_us": f"{add_us:.1f}", "clip_write_p50_ms_per_message": f"{write_ms:.2f}",
                "clip_last_error": rs.last_error,
            })
            if rs.errors or rs.records_dropped:
                level = DiagnosticStatus.WARN
                message = f"clips: {rs.errors} errors, {rs.records_dropped} messages dropped ({rs.last_error})"
        status.append(DiagnosticStatus(level=level, name=f"semanom: {node_name}/alarm", message=message,
                                       hardware_id=hardware_id,
                                       values=[KeyValue(key=k, value=v) for k, v in alarm.items()]))
        return status
