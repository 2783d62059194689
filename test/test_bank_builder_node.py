"""The bank_builder_node over real DDS (localhost only, a random domain id in [101, 200]).

Live recording with the ~/save (Trigger) and ~/recording (SetBool) services, bad messages, saving
on shutdown, appending, and the offline mode that runs the same build as semanom-bank.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from conftest import isolated_ros_context, textured_frame  # noqa: E402
from semanom_ros.core.bank import NominalBank  # noqa: E402
from semanom_ros.core.errors import BankMismatchError, ConfigError  # noqa: E402
from semanom_ros.io.bagwrite import write_image_bag  # noqa: E402
from semanom_ros.io.images import encode_compressed, encode_image  # noqa: E402
from semanom_ros.nodes.bank_builder_node import BankBuilderNode  # noqa: E402

pytestmark = pytest.mark.ros
_names = itertools.count()


@pytest.fixture(scope="module")
def ros_context():
    with isolated_ros_context(101, 200) as context:
        yield context


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Harness:
    """A bank builder node plus a probe node (camera publisher, service clients) spun in the background."""

    def __init__(self, context: Context, params: dict[str, Any], topic: str = "/cam/image_raw",
                 msg_type: Any = Image) -> None:
        self.name = f"bank_builder_{os.getpid()}_{next(_names)}"
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = BankBuilderNode(self.name, context=context, parameter_overrides=overrides,
                                    cli_args=["--ros-args", "-r", f"image:={topic}"])
        self.probe = Node(f"probe_{self.name}", context=context)
        self.pub = self.probe.create_publisher(
            msg_type, topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.save_client = self.probe.create_client(Trigger, f"/{self.name}/save")
        self.recording_client = self.probe.create_client(SetBool, f"/{self.name}/recording")
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        wait_until(lambda: self.pub.get_subscription_count() > 0, 15, "the node's subscription")
        assert self.save_client.wait_for_service(timeout_sec=15)
        assert self.recording_client.wait_for_service(timeout_sec=15)
        self.stamp = 1_700_000_000

    def publish(self, rgb: np.ndarray | None = None, msg: Any = None, wait: bool = True) -> None:
        """Publish one frame and wait until the node has dealt with it (recorded, skipped or refused)."""
        s = self.node.stats
        done_before = s.recorded + s.bad_messages + s.near_duplicate + sum(s.selection.values()) + s.paused
        if msg is None:
            header = Header(frame_id="cam")
            header.stamp.sec = self.stamp
            self.stamp += 1
            msg = encode_image(rgb, "rgb8", header=header)
        self.pub.publish(msg)
        if wait:
            wait_until(lambda: s.recorded + s.bad_messages + s.near_duplicate + sum(s.selection.values()) + s.paused
                       > done_before, 20, "the node to take the frame")

    def call(self, client: Any, request: Any) -> Any:
        future = client.call_async(request)
        wait_until(future.done, 60, "a service response")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()  # saves unsaved frames, like main() on Ctrl-C
        self.probe.destroy_node()
        self.thread.join(timeout=10)


def _params(model: str, out: Path, **extra: Any) -> dict[str, Any]:
    return {"output_bank": str(out), "model": model, "input_height": 28, "device": "cpu", "calibration_window": 1,
            **extra}


def test_live_recording_pause_save_and_shutdown(ros_context, tiny_model, tmp_path):
    out = tmp_path / "live_bank"
    h = Harness(ros_context, _params(tiny_model, out))
    try:
        assert h.node.input_topic == "/cam/image_raw" and h.node.recording
        response = h.call(h.save_client, Trigger.Request())
        assert not response.success and "no frame recorded yet" in response.message
        for seed in range(4):
            h.publish(textured_frame(seed, 48, 80))
        assert h.node.stats.recorded == 4

        paused = h.call(h.recording_client, SetBool.Request(data=False))
        assert paused.success and paused.message.startswith("paused; 4 frames recorded")
        for seed in range(4, 6):
            h.publish(textured_frame(seed, 48, 80))
        assert h.node.stats.paused == 2 and h.node.stats.recorded == 4
        assert h.call(h.recording_client, SetBool.Request(data=True)).message.startswith("recording")

        bad = encode_image(textured_frame(9, 48, 80), "rgb8")
        bad.step = 10  # impossible row length: undecodable, counted, no crash
        h.publish(msg=bad)
        assert h.node.stats.bad_messages == 1
        h.publish(textured_frame(6, 48, 80))

        response = h.call(h.save_client, Trigger.Request())
        assert response.success, response.message
        assert f"saved 5 frames (30 vectors) to {out}" in response.message and "threshold" in response.message
        bank = NominalBank.load(out)
        assert bank.num_frames == 5 and len(bank) == 30 and bank.calibration["window"] == 1
        (source,) = bank.sources
        assert source.name.startswith("live /cam/image_raw ") and source.topic == "/cam/image_raw"
        assert (source.first_stamp_ns, source.last_stamp_ns) == (1_700_000_000 * 10**9, 1_700_000_006 * 10**9)
        np.testing.assert_array_equal(bank.frames["index"], [0, 1, 2, 3, 7])  # message ordinals on the topic
        record = bank.extra["builds"][-1]
        assert record["live"] and record["skipped"]["paused"] == 2 and record["skipped"]["bad_message"] == 1

        # Recording goes on after a save; shutdown saves what is not saved yet.
        h.publish(textured_frame(7, 48, 80))
        assert h.node.stats.unsaved == 1
    finally:
        h.close()
    bank = NominalBank.load(out)
    assert bank.num_frames == 6 and bank.calibration is not None


def test_live_compressed_stride_dedup_and_append(ros_context, tiny_model, other_tiny_model, tmp_path):
    out = tmp_path / "bank"
    h = Harness(ros_context, _params(tiny_model, out, stride=2, dedup_similarity=0.999999, input_type="compressed"),
                topic="/cam/image_raw/compressed", msg_type=CompressedImage)
    try:
        assert h.node.input_topic == "/cam/image_raw/compressed"
        frames = [textured_frame(s, 48, 80) for s in (0, 0, 0, 0, 1, 1)]  # 0 (kept), 2 (duplicate), 4 (kept)
        for rgb in frames:
            h.publish(msg=encode_compressed(rgb, "png"))
        s = h.node.stats
        assert (s.recorded, s.selection.get("stride"), s.near_duplicate) == (2, 3, 1)
        assert h.call(h.save_client, Trigger.Request()).success
    finally:
        h.close()
    assert NominalBank.load(out).num_frames == 2

    # Append: a second session adds a new source; another model is refused before recording.
    h = Harness(ros_context, _params("", out, append=True, input_height=0))
    try:
        h.publish(textured_frame(20, 48, 80))
        h.publish(textured_frame(21, 48, 80))
        assert h.call(h.save_client, Trigger.Request()).success
    finally:
        h.close()
    bank = NominalBank.load(out)
    assert bank.num_frames == 4 and len(bank.sources) == 2 and bank.signature.model == tiny_model
    with pytest.raises(BankMismatchError):
        BankBuilderNode("refused", context=ros_context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in
                                             _params(other_tiny_model, out, append=True).items()])
    with pytest.raises(ConfigError, match="output_bank"):
        BankBuilderNode("no_output", context=ros_context)


def test_failed_calibration_keeps_frames_and_shutdown_saves_uncalibrated(ros_context, tiny_model, tmp_path):
    out = tmp_path / "bank"
    h = Harness(ros_context, _params(tiny_model, out, calibration_window=100))
    try:
        h.publish(textured_frame(0, 48, 80))
        h.publish(textured_frame(1, 48, 80))
        response = h.call(h.save_client, Trigger.Request())
        assert not response.success and "calibration failed" in response.message and not out.exists()
        assert h.node.stats.unsaved == 2
    finally:
        h.close()
    bank = NominalBank.load(out)  # saved rather than lost, and marked as uncalibrated
    assert bank.num_frames == 2 and bank.calibration is None


def test_offline_mode_builds_from_bags(ros_context, tiny_model, tmp_path):
    bag = write_image_bag(tmp_path / "drive", [textured_frame(i, 48, 80) for i in range(6)], "/cam")
    out = tmp_path / "bank"
    params = _params(tiny_model, out, stride=2)
    node = BankBuilderNode("offline_builder", context=ros_context,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]
                           + [Parameter("sources", value=[str(bag)])])
    try:
        assert node.offline and node.bank is None
        summary = node.run_offline()
    finally:
        node.destroy_node()
    assert summary.frames_used == 3 and summary.skipped["stride"] == 3
    assert NominalBank.load(out).num_frames == 3


def test_main_saves_on_ctrl_c(ros_context, tiny_model, tmp_path):
    """The real executable: rclpy's own SIGINT handling, then the save of the unsaved frames."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "bank"
    name = f"ctrl_c_builder_{os.getpid()}"
    topic = f"/ctrl_c_cam_{os.getpid()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    args = ["--ros-args", "-r", f"__node:={name}", "-r", f"image:={topic}", "-p", f"output_bank:={out}",
            "-p", f"model:={tiny_model}", "-p", "input_height:=28", "-p", "calibration_window:=1"]
    proc = subprocess.Popen(
        # SIGINT reset first: a runner started in the background (``cmd &``) passes it down as ignored.
        [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from semanom_ros.nodes.bank_builder_node import main; sys.exit(main(sys.argv[1:]))", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    probe = Node(f"probe_{name}", context=ros_context)
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(probe)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        pub = probe.create_publisher(Image, topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        client = probe.create_client(SetBool, f"/{name}/recording")
        assert client.wait_for_service(timeout_sec=120), "the node process did not come up"
        recorded = 0
        for i in range(300):
            header = Header(frame_id="cam")
            header.stamp.sec = 1_700_000_000 + i
            pub.publish(encode_image(textured_frame(i, 48, 80), "rgb8", header=header))
            time.sleep(0.1)
            if i % 5 == 4:
                future = client.call_async(SetBool.Request(data=True))
                wait_until(future.done, 30, "the recording service")
                recorded = int(future.result().message.split(";")[1].split()[0])
                if recorded >= 3:
                    break
        assert recorded >= 3
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.shutdown()
        probe.destroy_node()
    assert proc.returncode == 0, output
    assert "saving" in output and "Traceback" not in output
    bank = NominalBank.load(out)
    assert bank.num_frames >= recorded and bank.calibration is not None
