"""The monitor's output side: delivery, the debounced alarm and ~/events, clips, decode-ahead, diagnostics.

Delivery is counted per topic by a reliable and a best-effort subscriber; the /diagnostics names
are checked against the example aggregator configuration.

Unit tests need no DDS; the node tests run a monitor in one rclpy context and its subscribers in a
second one (separate DDS participants, as a separate process would be) on a random localhost domain.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import isolated_ros_context, textured_frame
from semanom_ros.core.debounce import Debouncer
from semanom_ros.io.clips import clip_dirs, clip_name, enforce_quota
from semanom_ros.workflows.clip_recorder import ClipRecord, ClipRecorder

REPO = Path(__file__).resolve().parents[1]


# -- alarm debounce -------------------------------------------------------------------------------------------
def test_debouncer_needs_onset_of_window_and_release_run():
    d = Debouncer(onset_frames=2, window=3, release_frames=2)
    flags = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    events = [(i, e.kind) for i, f in enumerate(flags) if (e := d.update(bool(f), 1000 + i, 0.5)) is not None]
    # 1,0,0: one in three -> nothing; 0,1,0,1: two of the last three at frame 5 -> onset; 0,1 resets the
    # nominal run; 0,0 at frames 9-10 -> offset; 1,1 -> onset again (the window was cleared at the offset)
    assert events == [(5, "onset"), (10, "offset"), (12, "onset")]
    assert d.active and d.onsets == 2 and d.onset_stamp_ns == 1012
    raw = Debouncer()  # 1/1/1 follows the raw flag
    assert [e.kind for f in (1, 1, 0, 1) if (e := raw.update(bool(f), 0)) is not None] == ["onset", "offset", "onset"]
    with pytest.raises(ValueError, match="onset_frames"):
        Debouncer(onset_frames=4, window=3)
    with pytest.raises(ValueError, match="release_frames"):
        Debouncer(release_frames=0)


# -- clip recorder (no DDS: CDR bytes go in as they are) --------------------------------------------------------
def _string_cdr(text: str) -> bytes:
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    return bytes(ts.serialize_cdr(ts.types["std_msgs/msg/String"](data=text), "std_msgs/msg/String"))


def _read_clip(path: Path) -> dict[str, list[tuple[int, str]]]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out: dict[str, list[tuple[int, str]]] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, ts, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((ts, getattr(msg, "data", conn.msgtype)))
    return out


def test_clip_recorder_writes_pre_and_post_seconds_around_an_onset(tmp_path):
    rec = ClipRecorder(tmp_path / "clips", pre_s=0.25, post_s=0.2, quota_bytes=10 << 20, buffer_bytes=1 << 20)
    base = 1_700_000_000_000_000_000
    step = 100_000_000  # 10 Hz
    onset = base + 10 * step
    for i in range(20):
        stamp = base + i * step
        rec.add([ClipRecord("/cam", "std_msgs/msg/String", stamp, _string_cdr(f"frame {i}"), 64),
                 ClipRecord("/mon/score", "std_msgs/msg/String", stamp, _string_cdr(f"score {i}"), 64)])
        if stamp == onset:
            path = rec.trigger(onset)
            assert path == tmp_path / "clips" / clip_name(onset) and rec.recording
        if i == 11:
            assert rec.trigger(base + 11 * step) is None  # a second onset inside the clip extends it
    assert rec.flush() and not rec.recording
    clips = clip_dirs(tmp_path / "clips")
    assert [c.name for c in clips] == ["anomaly_20231114T221321.000Z"]  # named by the onset stamp (UTC)
    written = _read_clip(clips[0])
    # pre 0.25 s -> frames 8, 9 (and the onset 10); post 0.2 s after the extended onset (11) -> up to 13
    assert [text for _, text in written["/cam"]] == [f"frame {i}" for i in range(8, 14)]
    assert [ts for ts, _ in written["/mon/score"]] == [base + i * step for i in range(8, 14)]
    assert rec.stats.clips_written == 1 and rec.stats.records_dropped == 0 and rec.stats.errors == 0
    assert len(rec.stats.add_s) == 20
    assert rec.close()


def test_clip_quota_deletes_the_oldest_clips(tmp_path):
    folder = tmp_path / "clips"
    for name, size in (("anomaly_20240101T000000.000Z", 400), ("anomaly_20240102T000000.000Z", 400),
                       ("anomaly_20240103T000000.000Z", 400), ("other", 5000)):
        (folder / name).mkdir(parents=True)
        (folder / name / "data.bin").write_bytes(bytes(size))
    deleted = enforce_quota(folder, quota_bytes=1000, reserve_bytes=300)  # 1200 + 300 -> 1100 -> 700
    assert [p.name for p in deleted] == ["anomaly_20240101T000000.000Z", "anomaly_20240102T000000.000Z"]
    assert sorted(p.name for p in folder.iterdir()) == ["anomaly_20240103T000000.000Z", "other"]  # others kept


def test_clip_ring_and_pending_memory_are_bounded(tmp_path):
    rec = ClipRecorder(tmp_path / "c", pre_s=100.0, post_s=100.0, buffer_bytes=1000)
    for i in range(50):
        rec.add([ClipRecord("/cam", "std_msgs/msg/String", i, _string_cdr("x"), 100)])
    assert len(rec._ring) == 10  # 1000 bytes of 100-byte records, whatever pre_s says
    rec.trigger(49)
    for i in range(50, 80):  # no writer progress is guaranteed: what exceeds the pending bound is dropped
        rec.add([ClipRecord("/cam", "std_msgs/msg/String", i, _string_cdr("x"), 600)])
    assert rec.close()
    assert rec.stats.clips_written == 1 and rec.stats.records_dropped > 0


# -- decode ahead -----------------------------------------------------------------------------------------------
def test_decode_ahead_decodes_the_next_frame_while_the_worker_is_busy():
    from semanom_ros.nodes.decode_stage import DecodeAheadWorker

    decoded_at: dict[int, float] = {}
    handled: list[tuple[int, float]] = []
    drops: list[int] = []
    release = threading.Event()

    def decode(item: int) -> int | None:
        decoded_at[item] = time.monotonic()
        return None if item == 3 else item  # 3 is a "bad message": skipped

    def handle(item: int) -> None:
        handled.append((item, time.monotonic()))
        if item == 1:
            release.wait(2)  # the worker is busy with frame 1 ...

    worker = DecodeAheadWorker("t", decode, handle, lambda exc: None, lambda: drops.append(1))
    worker.start()
    worker.offer(1)
    deadline = time.monotonic() + 2
    while not handled and time.monotonic() < deadline:
        time.sleep(0.005)
    for item in (2, 3, 4):  # ... while these arrive; each is decoded at once, 4 replaces 2 in the decoded slot
        worker.offer(item)
        deadline = time.monotonic() + 2
        while item not in decoded_at and time.monotonic() < deadline:
            time.sleep(0.005)
    assert set(decoded_at) == {1, 2, 3, 4} and len(handled) == 1  # decoded before the worker was free
    release.set()
    deadline = time.monotonic() + 2
    while len(handled) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [item for item, _ in handled] == [1, 4] and drops == [1]
    assert worker.stop(timeout=2) and not worker.running


# -- diagnostics ------------------------------------------------------------------------------------------------
def test_aggregator_config_groups_every_semanom_status():
    config = yaml.safe_load((REPO / "config" / "diagnostic_aggregator.yaml").read_text())
    group = config["analyzers"]["ros__parameters"]["semanom"]
    assert group["type"] == "diagnostic_aggregator/AnalyzerGroup"
    (analyzer,) = group["analyzers"].values()
    assert analyzer["type"] == "diagnostic_aggregator/GenericAnalyzer"
    prefixes = analyzer["startswith"]
    for name in ("semanom: /semanom_monitor", "semanom: /robot/semanom_monitor/outputs",
                 "semanom: /semanom_monitor/alarm"):
        assert any(name.startswith(p) for p in prefixes), name


# -- the node over DDS ------------------------------------------------------------------------------------------
rclpy = pytest.importorskip("rclpy")
from test_monitor_node import wait_until  # noqa: E402


@pytest.fixture(scope="module")
def contexts():
    """(node context, subscriber context): two participants on one random domain."""
    from rclpy.context import Context

    with isolated_ros_context(231, 232) as node_context:
        other = Context()
        rclpy.init(context=other, domain_id=node_context.get_domain_id())
        try:
            yield node_context, other
        finally:
            rclpy.shutdown(context=other)


@pytest.fixture(scope="module")
def tiny_bank(tiny_model, tmp_path_factory) -> Path:
    from semanom_ros.core import PatchBankBuilder, PipelineConfig

    builder = PatchBankBuilder(PipelineConfig(model=tiny_model, input_height=56, calibration_window=0))
    builder.add_all(SimpleNamespace(rgb=textured_frame(s, 240, 320), source="t", index=s, stamp_ns=s)
                    for s in range(4))
    builder.calibrate()
    return builder.bank.save(tmp_path_factory.mktemp("banks") / "tiny")


class Probe:
    """A monitor node (node context) and, in the other context, a camera publisher and per-topic counters."""

    def __init__(self, contexts, params: dict[str, Any], keys: tuple[str, ...]) -> None:
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from semanom_ros.io.messages import output_message_types
        from semanom_ros.nodes.monitor_node import MonitorNode

        node_context, sub_context = contexts
        self.name = f"out_monitor_{os.getpid()}_{time.monotonic_ns() % 100000}"
        self.node = MonitorNode(self.name, context=node_context, cli_args=["--ros-args", "-r", "image:=/probe/image"],
                                parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.probe = Node(f"probe_{self.name}", context=sub_context)
        self.lock = threading.Lock()
        self.stamps: dict[tuple[str, str], list[int]] = {}
        types = output_message_types()
        self.subs = []
        for kind, policy in (("reliable", ReliabilityPolicy.RELIABLE), ("best_effort", ReliabilityPolicy.BEST_EFFORT)):
            for key in keys:
                self.stamps[(kind, key)] = []
                self.subs.append(self.probe.create_subscription(
                    types[key], f"/{self.name}/{key}", self._collector(kind, key),
                    QoSProfile(depth=50, reliability=policy)))
        self.events: list[dict] = []
        self.probe.create_subscription(
            String, f"/{self.name}/events", lambda m: self.events.append(json.loads(m.data)),
            QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.pub = self.probe.create_publisher(Image, "/probe/image", QoSProfile(depth=5,
                                               reliability=ReliabilityPolicy.RELIABLE))
        self.executors = []
        for node, ctx in ((self.node, node_context), (self.probe, sub_context)):
            executor = MultiThreadedExecutor(num_threads=3, context=ctx)
            executor.add_node(node)
            threading.Thread(target=executor.spin, daemon=True).start()
            self.executors.append(executor)

    def _collector(self, kind: str, key: str):
        def collect(msg: Any) -> None:
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec if hasattr(msg, "header") else 0
            with self.lock:
                self.stamps[(kind, key)].append(stamp)
        return collect

    def activate(self) -> None:
        from rclpy.lifecycle import TransitionCallbackReturn

        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS, self.node.stats.last_error
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_until(lambda: self.pub.get_subscription_count() > 0
                   and all(s.get_publisher_count() > 0 for s in self.subs), 10, "discovery")

    def frame(self, rgb: np.ndarray, stamp_ns: int) -> Any:
        from semanom_ros.io.images import encode_image

        msg = encode_image(rgb, "rgb8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        msg.header.frame_id = "probe_camera"
        return msg

    def count(self, kind: str, key: str) -> int:
        with self.lock:
            return len(self.stamps[(kind, key)])

    def close(self) -> None:
        for executor in self.executors:
            executor.shutdown()
        self.node.destroy_node()
        self.probe.destroy_node()


@pytest.fixture
def probe(contexts):
    made: list[Probe] = []

    def make(params: dict[str, Any], keys: tuple[str, ...]) -> Probe:
        p = Probe(contexts, params, keys)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


DELIVERY_KEYS = ("score_map", "heatmap", "overlay", "overlay/compressed", "instances/labels", "score", "is_anomalous")


def test_every_processed_frame_reaches_reliable_and_best_effort_subscribers_at_30hz(probe, tiny_bank):
    """Default output QoS (reliable, depth 5): 60 frames at 30 Hz, each topic counted by both subscribers."""
    p = probe({"bank_path": str(tiny_bank)}, DELIVERY_KEYS)
    p.activate()
    frames = [textured_frame(300 + i, 240, 320) for i in range(4)]
    node = p.node
    t0 = time.monotonic()
    # At least 60 frames at 30 Hz, more while fewer than 10 were processed (a loaded machine loses inputs
    # before the node's callback: sensor QoS, best effort); at most 600.
    for i in range(600):
        if i >= 60 and node.stats.processed >= 10:
            break
        p.pub.publish(p.frame(frames[i % 4], 10**18 + i * 33_333_333))
        time.sleep(max(0.0, t0 + (i + 1) / 30.0 - time.monotonic()))
    # The input is best effort (sensor QoS): on a loaded machine some frames never reach the
    # callback. Wait until the node has finished what it got (the count of its inputs is not the point here).
    last = [-1]

    def settled() -> bool:
        stats = node.stats
        done = stats.processed + stats.dropped == stats.received and stats.received == last[0]
        last[0] = stats.received
        time.sleep(0.3)
        return done

    wait_until(settled, 15, "the node to finish the frames it received")
    processed = node.stats.processed
    wait_until(lambda: all(p.count(kind, key) >= processed for kind, key in p.stamps), 5, "the outputs to arrive")
    time.sleep(0.2)
    counts = {f"{kind} {key}": p.count(kind, key) for kind, key in p.stamps}
    assert processed >= 10, counts
    assert all(n == processed for n in counts.values()), (processed, counts)
    with p.lock:
        stamped = [k for k in p.stamps if k[1] not in ("score", "is_anomalous")]
        for k in stamped:  # every stamped output carries a distinct input stamp, in order
            assert p.stamps[k] == sorted(set(p.stamps[k])) and p.stamps[k][0] >= 10**18, k
    statuses = {s.name: s for s in node._out.statuses(node.get_fully_qualified_name(), "cpu")}
    outputs = {kv.key: kv.value for kv in statuses[f"semanom: /{p.name}/outputs"].values}
    assert outputs["qos"] == "reliable, depth 5" and outputs["heatmap subscribers"] == "2"
    assert outputs["heatmap published"] == str(processed)
    assert node.diagnostic_status().name == f"semanom: /{p.name}"
    stages = {kv.key: kv.value for kv in node.diagnostic_status().values}["stages_p50_ms"]
    assert all(f"{stage} " in stages for stage in ("decode", "features", "search", "maps", "publish"))


def test_unsubscribed_images_are_not_built(probe, tiny_bank):
    p = probe({"bank_path": str(tiny_bank)}, ("score",))
    p.activate()
    assert p.node._out.wanted_keys() == {"score", "is_anomalous"}
    p.pub.publish(p.frame(textured_frame(1, 240, 320), 5 * 10**9))
    wait_until(lambda: p.count("reliable", "score") == 1, 10, "one score")
    published = p.node._out.published
    assert published["score"] == 1 and published["heatmap"] == 0 and published["overlay"] == 0


def test_alarm_events_and_an_anomaly_clip(probe, tiny_bank, tmp_path):
    from rclpy.parameter import Parameter

    clip_dir = tmp_path / "clips"
    params = {"bank_path": str(tiny_bank), "threshold": 2.0, "alarm_onset_frames": 2, "alarm_window": 3,
              "alarm_release_frames": 2, "clip_dir": str(clip_dir), "clip_pre_s": 0.25, "clip_post_s": 0.15,
              "min_component_area_px": 0}
    p = probe(params, ("score",))
    p.activate()
    node = p.node
    rgb = textured_frame(7, 240, 320)
    base = 1_700_000_000 * 10**9
    plan = [2.0] * 4 + [0.0] * 4 + [2.0] * 5  # nominal, anomalous (threshold 0), nominal again
    for i, threshold in enumerate(plan):
        if node.monitor.threshold != threshold:
            assert node.set_parameters([Parameter("threshold", value=threshold)])[0].successful
        p.pub.publish(p.frame(rgb, base + i * 100_000_000))
        wait_until(lambda i=i: p.count("reliable", "score") == i + 1, 10, f"frame {i}")
    wait_until(lambda: len(p.events) == 2, 5, "onset and offset events")
    onset, offset = p.events
    onset_stamp = base + 5 * 100_000_000  # the second anomalous frame of a window of three
    assert onset["event"] == "onset" and onset["stamp_ns"] == onset_stamp and onset["frame_id"] == "probe_camera"
    assert onset["anomalous_in_window"] == 2 and onset["window"] == 3 and onset["threshold"] == 0.0
    assert offset["event"] == "offset" and offset["stamp_ns"] == base + 9 * 100_000_000
    assert offset["onset_stamp_ns"] == onset_stamp
    assert onset["clip"] == str(clip_dir / clip_name(onset_stamp))
    assert node._out.recorder.flush()
    written = _read_clip(Path(onset["clip"]))
    window = [base + i * 100_000_000 for i in range(3, 7)]  # 0.25 s before to 0.15 s after the onset
    assert [ts for ts, _ in written["/probe/image"]] == window
    ns = f"/{p.name}"
    assert [ts for ts, _ in written[f"{ns}/score"]] == window
    assert [ts for ts, _ in written[f"{ns}/overlay/compressed"]] == window
    assert [flag for _, flag in written[f"{ns}/is_anomalous"]] == [False, True, True, True]  # frames 3-6
    assert [json.loads(text)["event"] for _, text in written[f"{ns}/events"]] == ["onset"]
    alarm = {kv.key: kv.value for kv in
             {s.name: s for s in node._out.statuses(ns, "cpu")}[f"semanom: {ns}/alarm"].values}
    assert alarm["alarm"] == "clear" and alarm["onsets"] == "1" and alarm["clips_written"] == "1"


# -- Fast DDS profile -------------------------------------------------------------------------------------------
def test_dds_profile_is_the_config_file_and_respects_the_users_choice():
    import xml.etree.ElementTree as ET

    from semanom_ros.nodes.dds_profile import LARGE_IMAGES_PROFILE, apply_large_image_profile

    shipped = (REPO / "config" / "fastdds_large_images.xml").read_text()
    assert ET.tostring(ET.fromstring(LARGE_IMAGES_PROFILE)) == ET.tostring(ET.fromstring(shipped.encode()))
    segment = ET.fromstring(LARGE_IMAGES_PROFILE).find(".//{http://www.eprosima.com}segment_size")
    assert int(segment.text) >= 32 << 20
    env: dict[str, str] = {}
    path = apply_large_image_profile(env)
    assert path and env == {"FASTDDS_DEFAULT_PROFILES_FILE": path} and Path(path).read_text() == LARGE_IMAGES_PROFILE
    humble = {"ROS_DISTRO": "humble"}
    assert apply_large_image_profile(humble) == humble["FASTRTPS_DEFAULT_PROFILES_FILE"]  # Fast DDS 2.x's name
    for untouched in ({"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}, {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
                      {"SEMANOM_DDS_PROFILE": "off"}):
        before = dict(untouched)
        assert apply_large_image_profile(untouched) is None and untouched == before
