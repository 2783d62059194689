"""The monitor_node in instance and combined mode over real DDS (localhost only, domain id in [201, 230]).

With tiny random-init OWLv2, SAM 2 and DINOv2 checkpoints: the instance outputs appear with the
input frame's stamp, frame_id and size.
"""
from __future__ import annotations

import os
import random
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool, Float32  # noqa: E402

from conftest import isolated_ros_context, textured_frame  # noqa: E402
from semanom_ros.core import PatchBankBuilder, PipelineConfig, build_instance_bank  # noqa: E402
from semanom_ros.io.images import encode_image  # noqa: E402
from semanom_ros.nodes.monitor_node import MonitorNode  # noqa: E402
from tiny_models import save_tiny_dinov2, save_tiny_owlv2, save_tiny_sam2  # noqa: E402

pytestmark = pytest.mark.ros

H, W = 84, 140
OUTPUTS = {"is_anomalous": Bool, "score": Float32, "score_map": Image, "overlay": Image, "instances/labels": Image}


@pytest.fixture(scope="module")
def ros_context():
    with isolated_ros_context(201, 230) as context:
        yield context


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("instance_node")
    dino = str(save_tiny_dinov2(root / "dino"))
    owl = str(save_tiny_owlv2(root / "owl"))
    sam = str(save_tiny_sam2(root / "sam"))
    params = dict(
        detector_model=owl,
        segmenter_model=sam,
        detector_score_threshold=0.0,
        detector_top_k=3,
        instance_min_mask_area_px=20,
        calibration_window=1,
    )
    frames = [SimpleNamespace(rgb=textured_frame(i, H, W), source="nominal", index=i, stamp_ns=i + 1) for i in range(6)]
    cfg = PipelineConfig(model=dino, input_height=56, mode="instance", **params)
    instance_bank = root / "instance_bank"
    build_instance_bank(cfg, frames, instance_bank)
    patch_cfg = PipelineConfig(model=dino, input_height=56, calibration_window=1)
    builder = PatchBankBuilder(patch_cfg)
    builder.add_all(frames)
    builder.calibrate()
    patch_bank = builder.bank.save(root / "patch_bank")
    node_params = {k: v for k, v in params.items() if k != "calibration_window"}
    return SimpleNamespace(instance_bank=instance_bank, patch_bank=patch_bank, params=node_params)


class Probe:
    """The monitor node and a probe node (camera publisher + output subscribers) spun in the background."""

    def __init__(self, context: Context, params: dict[str, Any]) -> None:
        name = f"inst_monitor_{os.getpid()}_{random.randint(0, 10**6)}"
        self.node = MonitorNode(
            name, context=context, cli_args=["--ros-args", "-r", "image:=/cam/image_raw"],
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
        self.probe = Node(f"probe_{name}", context=context)
        self.lock = threading.Lock()
        self.received: dict[str, list[Any]] = {k: [] for k in OUTPUTS}
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.subs = [
            self.probe.create_subscription(t, f"/{name}/{key}", self._collect(key), reliable)
            for key, t in OUTPUTS.items()
        ]
        self.pub = self.probe.create_publisher(Image, "/cam/image_raw", reliable)
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _collect(self, key: str):
        def collect(msg: Any) -> None:
            with self.lock:
                self.received[key].append(msg)
        return collect

    def activate(self) -> None:
        ok = TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_configure() == ok, self.node.stats.last_error
        assert self.node.trigger_activate() == ok
        wait_until(lambda: self.pub.get_subscription_count() > 0 and all(s.get_publisher_count() for s in self.subs))

    def send(self, rgb: np.ndarray, sec: int) -> dict[str, Any]:
        """Publish one frame and wait until every output carrying its stamp arrived."""
        msg = encode_image(rgb, "rgb8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, 5_000
        msg.header.frame_id = "front_camera"
        self.pub.publish(msg)

        def arrived() -> bool:
            with self.lock:
                stamped = all(
                    any(m.header.stamp.sec == sec for m in self.received[k])
                    for k in ("score_map", "overlay", "instances/labels")
                )
                return stamped and len(self.received["is_anomalous"]) > 0
        wait_until(arrived, timeout=30.0)
        time.sleep(0.05)
        with self.lock:
            out = {k: next(m for m in reversed(self.received[k]) if m.header.stamp.sec == sec)
                   for k in ("score_map", "overlay", "instances/labels")}
            out["is_anomalous"] = self.received["is_anomalous"][-1]
            out["score"] = self.received["score"][-1]
        return out

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.probe.destroy_node()
        self.thread.join(timeout=5)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s")


def _array(msg: Image) -> np.ndarray:
    dtype = {"32FC1": "<f4", "mono16": "<u2", "bgr8": "u1"}[msg.encoding]
    return np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, msg.width, -1)


def test_instance_mode_outputs_carry_the_frame_stamp_and_size(ros_context, setup):
    probe = Probe(ros_context, {"bank_path": str(setup.instance_bank), "mode": "instance", "threshold": 0.0,
                                **setup.params})
    try:
        probe.activate()
        assert probe.node.monitor.instance_scorer is not None
        for sec in (11, 12):
            out = probe.send(textured_frame(100 + sec, H, W), sec)
            labels = out["instances/labels"]
            assert labels.encoding == "mono16" and (labels.height, labels.width) == (H, W)
            assert labels.header.frame_id == "front_camera" and labels.header.stamp.nanosec == 5_000
            values = np.unique(_array(labels))
            assert values[0] == 0 and 1 <= values.max() <= 3  # instances 1..n, n <= detector_top_k
            for key, enc in (("score_map", "32FC1"), ("overlay", "bgr8")):
                msg = out[key]
                assert msg.encoding == enc and (msg.height, msg.width) == (H, W)
                assert msg.header.stamp.sec == sec and msg.header.frame_id == "front_camera"
            scores = _array(out["score_map"])[..., 0]
            # The score map holds each instance's score on its pixels, 0 elsewhere.
            assert (scores[_array(labels)[..., 0] == 0] == 0).all() and scores.max() > 0
            assert out["is_anomalous"].data is True and out["score"].data == pytest.approx(scores.max(), rel=1e-5)
    finally:
        probe.close()


def test_combined_mode_through_the_node(ros_context, setup):
    probe = Probe(ros_context, {"bank_path": str(setup.patch_bank), "mode": "combined",
                                "instance_bank": str(setup.instance_bank), **setup.params})
    try:
        probe.activate()
        out = probe.send(textured_frame(300, H, W), 21)
        labels = _array(out["instances/labels"])[..., 0]
        assert labels.shape == (H, W) and labels.max() >= 1
        assert out["instances/labels"].header.stamp.sec == 21
    finally:
        probe.close()
