"""build_output_messages: the monitor's messages from one AnomalyResult (no node, no DDS)."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Bool, Float32, Header  # noqa: E402

from semanom_ros.core.heatmap import render_heatmap  # noqa: E402
from semanom_ros.core.maps import render_overlay, threshold_components  # noqa: E402
from semanom_ros.core.result import AnomalyResult  # noqa: E402
from semanom_ros.io import messages  # noqa: E402
from semanom_ros.io.messages import build_output_messages, detection_regions, detection_rows, output_size  # noqa: E402

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
    expected = {"is_anomalous", "score", "score_map", "heatmap", "overlay", "overlay/compressed", "instances/labels"}
    if messages.HAVE_VISION_MSGS:
        expected.add("instances")
    assert set(msgs) == expected
    assert isinstance(msgs["is_anomalous"], Bool) and msgs["is_anomalous"].data is True
    jpeg = msgs["overlay/compressed"]
    assert isinstance(jpeg, CompressedImage) and jpeg.format == "bgr8; jpeg compressed bgr8"
    assert jpeg.header.stamp == header.stamp and jpeg.header.frame_id == "camera_optical"
    decoded = cv2.imdecode(np.frombuffer(bytes(jpeg.data), np.uint8), cv2.IMREAD_COLOR)  # BGR, as image_transport
    blur = lambda image: cv2.blur(image, (8, 8)).astype(int)  # noqa: E731 - JPEG keeps local means, not noise
    assert decoded.shape == overlay.shape and np.abs(blur(decoded) - blur(overlay)).mean() < 6
    assert isinstance(msgs["score"], Float32) and msgs["score"].data == pytest.approx(0.9)
    for key, enc in (("score_map", "32FC1"), ("heatmap", "bgr8"), ("overlay", "bgr8"), ("instances/labels", "mono16")):
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
    assert set(msgs) == {"is_anomalous", "score", "score_map", "heatmap", "instances/labels"}
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
        assert len(det.detections) == 3 and det.detections[0].id == "image" and det.detections[1].id == "1"
        assert det.header.frame_id == "camera_optical"
    else:
        assert "instances" not in build_output_messages(result, rgb, _header())
        with pytest.raises(ImportError, match="vision_msgs"):
            messages.build_detections(result, _header())


def test_heatmap_scale_is_fixed_by_the_threshold():
    """0 .. 2 x threshold: the threshold is mid-scale whatever the frame holds; a contour marks it."""
    threshold = 0.14
    ramp = np.tile(np.linspace(0.0, 0.3, 61, dtype=np.float32), (20, 1))  # scores as they live: 0 .. 0.3
    heat = render_heatmap(ramp, threshold, contour=False)
    turbo = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0]
    col = int(np.argmin(np.abs(ramp[0] - threshold)))
    assert np.abs(heat[0, col].astype(int) - turbo[127]).max() <= 12  # threshold -> the colormap's middle
    assert (heat[0, 0] == turbo[0]).all() and (heat[0, -1] == turbo[255]).all()  # 0.3 > 2 x 0.14: saturated
    # the same scores under another threshold give other colours: the scale follows the threshold, not the frame
    assert not np.array_equal(render_heatmap(ramp, 0.05, contour=False), heat)
    with_contour = render_heatmap(ramp, threshold)
    assert (with_contour == 255).all(axis=2).any()  # the white threshold contour
    assert not (heat == 255).all(axis=2).any()
    assert render_heatmap(np.zeros((4, 5), np.float32), 0.1).shape == (4, 5, 3)


def test_keys_limit_the_work_and_max_output_pixels_bounds_the_images():
    result, rgb = _result()
    only = build_output_messages(result, rgb, _header(), keys={"score", "heatmap"})
    assert set(only) == {"score", "heatmap"}
    assert output_size(48, 80, 0) == (48, 80) and output_size(48, 80, 48 * 80) == (48, 80)
    assert output_size(480, 640, 640 * 480 // 4) == (240, 320)
    msgs = build_output_messages(result, rgb, _header(), overlay_bgr=np.zeros((H, W, 3), np.uint8),
                                 max_output_pixels=H * W // 4)
    for key in ("score_map", "heatmap", "overlay", "instances/labels"):
        assert (msgs[key].height, msgs[key].width) == (H // 2, W // 2), key
    labels = _array(msgs["instances/labels"])
    assert set(np.unique(labels)) == {0, 1, 2}  # nearest neighbour: label values survive the shrink
    assert _array(msgs["score_map"]).max() == pytest.approx(0.9)


def test_detection_rows_start_with_the_image_level_result():
    result, _ = _result()
    rows = detection_rows(result, (H, W))
    assert rows[0] == ("image", "anomalous", pytest.approx(0.9), W / 2, H / 2, float(W), float(H))
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    assert rows[1][3:] == (35.0, 20.0, 30.0, 20.0)  # centre and size of the box (20, 10, 30, 20)
    nominal, _ = _result(anomalous=False)
    assert detection_rows(nominal, (H, W))[0][1] == "nominal" and len(detection_rows(nominal, (H, W))) == 1
