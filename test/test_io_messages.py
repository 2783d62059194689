"""build_output_messages: the monitor's messages from one AnomalyResult (no node, no DDS)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool, Float32, Header  # noqa: E402

from semanom_ros.core.maps import render_overlay, threshold_components  # noqa: E402
from semanom_ros.core.result import AnomalyResult  # noqa: E402
from semanom_ros.io import messages  # noqa: E402
from semanom_ros.io.messages import build_output_messages, detection_regions  # noqa: E402

H, W = 48, 80


def _result(anomalous: bool = True) -> tuple[AnomalyResult, np.ndarray]:
    rng = np.random.default_rng(0)
    score_map = rng.uniform(0.0, 0.2, (H, W)).astype(np.float32)
    if anomalous:
        score_map[10:30, 20:50] = 0.9
        score_map[40:44, 70:74] = 0.8  # a second, smaller region
    mask, labels, components = threshold_components(score_map, 0.5, 10)
    result = AnomalyResult(
        is_anomalous=bool(components), score=float(score_map.max()), threshold=0.5, score_map=score_map,
        mask=mask, labels=labels, components=components, patch_scores=score_map[::8, ::8].copy(),
    )
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    return result, rgb


def _header() -> Header:
    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 1700000000, 123456789
    return header


def _array(msg: Image) -> np.ndarray:
    dtype = {"32FC1": np.float32, "mono16": np.uint16, "bgr8": np.uint8}[msg.encoding]
    arr = np.frombuffer(bytes(msg.data), dtype=np.dtype(dtype).newbyteorder("<"))
    return arr.reshape(msg.height, msg.width, -1).squeeze(-1) if msg.encoding != "bgr8" else arr.reshape(
        msg.height, msg.width, 3)


def test_keys_types_encodings_and_header():
    result, rgb = _result()
    overlay = render_overlay(rgb, result.score_map, result.mask, result.components, result.threshold)
    header = _header()
    msgs = build_output_messages(result, rgb, header, overlay_bgr=overlay)
    expected = {"is_anomalous", "score", "score_map", "overlay", "instances/labels"}
    if messages.HAVE_VISION_MSGS:
        expected.add("instances")
    assert set(msgs) == expected
    assert isinstance(msgs["is_anomalous"], Bool) and msgs["is_anomalous"].data is True
    assert isinstance(msgs["score"], Float32) and msgs["score"].data == pytest.approx(0.9)
    for key, enc in (("score_map", "32FC1"), ("overlay", "bgr8"), ("instances/labels", "mono16")):
        msg = msgs[key]
        assert msg.encoding == enc
        assert (msg.height, msg.width) == (H, W)
        assert msg.header.stamp == header.stamp and msg.header.frame_id == "camera_optical"
        assert msg.header is not header  # a copy: later changes to the input header do not leak
    np.testing.assert_array_equal(_array(msgs["score_map"]), result.score_map)
    np.testing.assert_array_equal(_array(msgs["instances/labels"]), result.labels)
    np.testing.assert_array_equal(_array(msgs["overlay"]), overlay)
    assert set(np.unique(result.labels)) == {0, 1, 2}


def test_overlay_only_when_given_and_detections_switch():
    result, rgb = _result(anomalous=False)
    msgs = build_output_messages(result, rgb, _header(), detections=False)
    assert set(msgs) == {"is_anomalous", "score", "score_map", "instances/labels"}
    assert msgs["is_anomalous"].data is False
    assert not _array(msgs["instances/labels"]).any()


def test_messages_serialise_for_bags():
    """semanom-replay writes these with rclpy.serialization; they must round-trip."""
    result, rgb = _result()
    msgs = build_output_messages(result, rgb, _header(), overlay_bgr=np.zeros((H, W, 3), np.uint8))
    for msg in msgs.values():
        back = deserialize_message(serialize_message(msg), type(msg))
        assert back == msg


def test_size_mismatch_is_a_clear_error():
    result, rgb = _result()
    with pytest.raises(ValueError, match="score_map is 80x48 but the frame is 40x24"):
        build_output_messages(result, rgb[::2, ::2], _header())
    with pytest.raises(ValueError, match="overlay"):
        build_output_messages(result, rgb, _header(), overlay_bgr=np.zeros((H // 2, W, 3), np.uint8))


def test_detection_regions_link_to_label_values():
    result, _ = _result()
    regions = detection_regions(result)
    assert [r[0] for r in regions] == [1, 2]
    label, cls, score, (x, y, w, h) = regions[0]
    assert cls == "anomaly" and score == pytest.approx(0.9)
    assert (x, y, w, h) == (20, 10, 30, 20)
    assert (result.labels[y : y + h, x : x + w] == label).all()
    # instance mode: instances first with their detector label, components that are instances not repeated
    inst = SimpleNamespace(index=1, label="a cat", score=0.7, box=(1, 2, 3, 4))
    result.instances = [inst]
    regions = detection_regions(result)
    assert regions[0] == (1, "a cat", 0.7, (1, 2, 3, 4))
    assert [r[0] for r in regions] == [1, 2]


def test_detections_need_vision_msgs():
    result, rgb = _result()
    if messages.HAVE_VISION_MSGS:
        det = build_output_messages(result, rgb, _header())["instances"]
        assert len(det.detections) == 2 and det.detections[0].id == "1"
        assert det.header.frame_id == "camera_optical"
    else:
        assert "instances" not in build_output_messages(result, rgb, _header())
        with pytest.raises(ImportError, match="vision_msgs"):
            messages.build_detections(result, _header())
