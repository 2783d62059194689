"""semanom-replay: a bag in, an MCAP bag of the input images and the monitor's topics out (tiny DINOv2)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import textured_frame
from semanom_ros.core import Monitor, PatchBankBuilder, PipelineConfig
from semanom_ros.io.images import decode_image
from semanom_ros.io.bagwrite import write_image_bag
from semanom_ros.io.vision_types import vision_typestore

pytest.importorskip("rclpy")
from semanom_ros.tools.replay import main  # noqa: E402
from semanom_ros.workflows.replay import output_paths  # noqa: E402
from semanom_ros.workflows.settings import config_from_bank  # noqa: E402

SHARED = Path(os.environ.get("SEMANOM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HIGHWAY_BAG = SHARED / "data" / "highway" / "bag_mcap"
COMPRESSED = "/camera/image_raw/compressed"
NS = "/semanom_monitor"
OUTPUTS = {
    f"{NS}/is_anomalous": "std_msgs/msg/Bool",
    f"{NS}/score": "std_msgs/msg/Float32",
    f"{NS}/score_map": "sensor_msgs/msg/Image",
    f"{NS}/heatmap": "sensor_msgs/msg/Image",
    f"{NS}/overlay": "sensor_msgs/msg/Image",
    f"{NS}/overlay/compressed": "sensor_msgs/msg/CompressedImage",
    f"{NS}/instances/labels": "sensor_msgs/msg/Image",
    f"{NS}/instances": "vision_msgs/msg/Detection2DArray",
}


@pytest.fixture(scope="module")
def tiny_bank(tiny_model, tmp_path_factory) -> Path:
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=1, min_component_area_px=200)
    builder = PatchBankBuilder(cfg)
    builder.add_all(
        SimpleNamespace(rgb=textured_frame(s, 84, 140), source="synthetic", index=s, stamp_ns=s * 100_000_000)
        for s in range(6)
    )
    builder.calibrate()
    return builder.bank.save(tmp_path_factory.mktemp("replay_banks") / "tiny")


def read_bag(path: Path) -> dict[str, list[tuple[int, bytes, str]]]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list[tuple[int, bytes, str]]] = {}
    # A fresh typestore: the bag's own embedded definitions (vision_msgs included) must suffice.
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, ts, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ts, bytes(raw), conn.msgtype))
    return out


def deserialize(raw: bytes, msgtype: str):
    return vision_typestore().deserialize_cdr(raw, msgtype)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.skipif(not HIGHWAY_BAG.is_dir(), reason=f"highway bag not found at {HIGHWAY_BAG} (set SEMANOM_SHARED)")
def test_replay_of_the_highway_bag_gives_a_readable_mcap_with_every_output(tiny_bank, tmp_path, capsys):
    out = tmp_path / "replay.mcap"
    rc = main([str(HIGHWAY_BAG), "--bank", str(tiny_bank), "-o", str(out), "--topic", COMPRESSED, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    bag_dir, mcap = output_paths(out)
    assert bag_dir == tmp_path / "replay" and mcap.is_file() and (bag_dir / "metadata.yaml").is_file()
    assert mcap.read_bytes()[:8] == b"\x89MCAP0\r\n"
    written = read_bag(bag_dir)
    assert {t: len(m) for t, m in written.items()} == {COMPRESSED: 150, **{t: 150 for t in OUTPUTS}}
    assert {t: m[0][2] for t, m in written.items()} == {COMPRESSED: "sensor_msgs/msg/CompressedImage", **OUTPUTS}

    # The input messages are copied through byte for byte, at their original timestamps.
    original = read_bag(HIGHWAY_BAG)[COMPRESSED]
    digest = lambda msgs: [(ts, hashlib.sha1(raw).hexdigest()) for ts, raw, _ in msgs]  # noqa: E731
    assert digest(written[COMPRESSED]) == digest(original)

    # Outputs sit at the input's timestamps and carry its header; one message of each type decodes.
    input_ts = [ts for ts, _, _ in original]
    for topic in OUTPUTS:
        assert [ts for ts, _, _ in written[topic]] == input_ts, topic
    first_in = deserialize(original[0][1], "sensor_msgs/msg/CompressedImage")
    flag = deserialize(written[f"{NS}/is_anomalous"][0][1], "std_msgs/msg/Bool")
    score = deserialize(written[f"{NS}/score"][0][1], "std_msgs/msg/Float32")
    assert isinstance(flag.data, bool) and np.isfinite(score.data) and score.data >= 0
    score_map = deserialize(written[f"{NS}/score_map"][0][1], "sensor_msgs/msg/Image")
    overlay = deserialize(written[f"{NS}/overlay"][0][1], "sensor_msgs/msg/Image")
    labels = deserialize(written[f"{NS}/instances/labels"][0][1], "sensor_msgs/msg/Image")
    for image, encoding, bytes_per_px in ((score_map, "32FC1", 4), (overlay, "bgr8", 3), (labels, "mono16", 2)):
        assert (image.encoding, image.height, image.width) == (encoding, 540, 960)
        assert image.step == 960 * bytes_per_px and len(image.data) == 540 * 960 * bytes_per_px
        assert stamp_ns(image) == stamp_ns(first_in) and image.header.frame_id == first_in.header.frame_id
    # ROS itself reads them back (rclpy's deserializer, as ros2 bag play would hand them to a subscriber).
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    assert deserialize_message(written[f"{NS}/is_anomalous"][0][1], Bool).data == flag.data
    assert deserialize_message(written[f"{NS}/overlay"][0][1], Image).encoding == "bgr8"
    # The replayed outputs are what a monitor computes on the decoded frame.
    expected = Monitor(config_from_bank(tiny_bank), tiny_bank).process(decode_image(first_in))
    assert score.data == pytest.approx(expected.score, rel=1e-6) and flag.data == expected.is_anomalous
    assert np.array_equal(np.frombuffer(score_map.data.tobytes(), "<f4").reshape(540, 960), expected.score_map)
    assert np.array_equal(np.frombuffer(labels.data.tobytes(), "<u2").reshape(540, 960), expected.labels)
    flags = [deserialize(raw, "std_msgs/msg/Bool").data for _, raw, _ in written[f"{NS}/is_anomalous"]]
    assert f"{sum(flags)} anomalous" in capsys.readouterr().out


def _small_bag(path: Path, corrupt_at: int | None = None) -> Path:
    items: list = [textured_frame(50 + i, 84, 140) for i in range(6)]
    if corrupt_at is not None:
        items[corrupt_at] = b"\x00\x01\x00\x00garbage"
    return write_image_bag(path, items, "/cam/image", compressed=True, fmt="png")


def test_replay_is_deterministic_and_copies_undecodable_messages_without_outputs(tiny_bank, tmp_path, capsys):
    bag = _small_bag(tmp_path / "in", corrupt_at=2)
    for name in ("a", "b"):
        assert main([str(bag), "--bank", str(tiny_bank), "-o", str(tmp_path / name), "--no-progress"]) == 0
    a, b = read_bag(tmp_path / "a"), read_bag(tmp_path / "b")
    assert a == b  # every message identical: nothing depends on timing
    assert len(a["/cam/image"]) == 6 and all(len(a[t]) == 5 for t in OUTPUTS)
    assert "message #2" in capsys.readouterr().err


def test_replay_refuses_to_overwrite_and_names_a_missing_topic(tiny_bank, tmp_path, capsys):
    bag = _small_bag(tmp_path / "in")
    out = tmp_path / "out"
    assert main([str(bag), "--bank", str(tiny_bank), "-o", str(out), "--no-progress", "--max-frames", "2"]) == 0
    assert main([str(bag), "--bank", str(tiny_bank), "-o", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(bag), "--bank", str(tiny_bank), "-o", str(out), "--no-progress", "--overwrite",
                 "--namespace", "/mon", "--no-overlay"]) == 0
    counts = {t: len(m) for t, m in read_bag(out).items()}
    assert counts == {"/cam/image": 6, "/mon/is_anomalous": 6, "/mon/score": 6, "/mon/score_map": 6,
                      "/mon/heatmap": 6, "/mon/instances/labels": 6, "/mon/instances": 6}
    assert main([str(bag), "--bank", str(tiny_bank), "-o", str(tmp_path / "x"), "--topic", "/nope"]) == 2
    err = capsys.readouterr().err
    assert "'/nope'" in err and "/cam/image" in err and not (tmp_path / "x").exists()


def test_eval_and_replay_share_their_pipeline_override_flags():
    from semanom_ros.tools import evaluate, replay
    from semanom_ros.tools.pipeline_args import pipeline_overrides

    for parser, required in ((evaluate.build_parser(), ["--bank", "b", "-o", "out"]),
                             (replay.build_parser(), ["in.mcap", "--bank", "b", "-o", "out"])):
        args = parser.parse_args([*required, "--alpha", "0.99", "--nprobe", "8", "--min-area", "100"])
        assert pipeline_overrides(args) == {"alpha": 0.99, "nprobe": 8, "min_component_area_px": 100}
        assert pipeline_overrides(parser.parse_args(required)) == {}


def test_sqlite3_storage_carries_detections_and_heatmap(tiny_bank, tmp_path, capsys):
    """--storage sqlite3 (plays on Humble without the MCAP plugin); the detections and the heat map decode."""
    bag = _small_bag(tmp_path / "in")
    out = tmp_path / "out.db3"
    assert main([str(bag), "--bank", str(tiny_bank), "-o", str(out), "--no-progress", "--storage", "sqlite3",
                 "--threshold", "0.0", "--min-area", "0"]) == 0, capsys.readouterr().err
    bag_dir, db3 = output_paths(out, "sqlite3")
    assert db3 == tmp_path / "out" / "out.db3" and db3.is_file()
    assert "storage_identifier: sqlite3" in (bag_dir / "metadata.yaml").read_text()
    assert not list(bag_dir.glob("*.mcap"))
    written = read_bag(bag_dir)
    assert {t: m[0][2] for t, m in written.items()} == {"/cam/image": "sensor_msgs/msg/CompressedImage", **OUTPUTS}
    frame = deserialize(written["/cam/image"][0][1], "sensor_msgs/msg/CompressedImage")
    det = deserialize(written[f"{NS}/instances"][0][1], "vision_msgs/msg/Detection2DArray")
    assert stamp_ns(det) == stamp_ns(frame) and det.header.frame_id == frame.header.frame_id
    image = det.detections[0]
    assert image.id == "image" and image.results[0].hypothesis.class_id == "anomalous"  # threshold 0: all above
    score = deserialize(written[f"{NS}/score"][0][1], "std_msgs/msg/Float32").data
    assert image.results[0].hypothesis.score == pytest.approx(score, rel=1e-6)
    assert (image.bbox.size_x, image.bbox.size_y) == (140, 84)
    assert (image.bbox.center.position.x, image.bbox.center.position.y) == (70, 42)
    # threshold 0 with no area filter: one region covering the whole frame, id 1 = its value in the labels
    assert [d.id for d in det.detections] == ["image", "1"] and det.detections[1].bbox.size_x == 140
    heatmap = deserialize(written[f"{NS}/heatmap"][0][1], "sensor_msgs/msg/Image")
    assert (heatmap.encoding, heatmap.height, heatmap.width) == ("bgr8", 84, 140)
    jpeg = deserialize(written[f"{NS}/overlay/compressed"][0][1], "sensor_msgs/msg/CompressedImage")
    assert "jpeg" in jpeg.format and bytes(jpeg.data[:2]) == b"\xff\xd8"
