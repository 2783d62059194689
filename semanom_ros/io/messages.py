"""The monitor's output messages, built from one AnomalyResult (pure message construction, no node).

The monitor node publishes these; ``semanom-replay`` serialises the same messages into a bag, so
both always agree on what each topic holds. Topic keys (relative to the node's private namespace):

=======================  ================================  ============================================
key                      type                              content
=======================  ================================  ============================================
``is_anomalous``         std_msgs/Bool                     the frame decision (no header: see below)
``score``                std_msgs/Float32                  image score (max patch score; compare with
                                                           the threshold; no header)
``score_map``            sensor_msgs/Image ``32FC1``       raw per-pixel scores
``heatmap``              sensor_msgs/Image ``bgr8``        the scores in colour on 0 .. 2 x threshold
                                                           (threshold = mid-scale, white contour)
``overlay``              sensor_msgs/Image ``bgr8``        heat map on the frame, contours, boxes,
                                                           scores (only when an overlay image is passed)
``overlay/compressed``   sensor_msgs/CompressedImage       the overlay as JPEG (remote viewers, bags)
``instances/labels``     sensor_msgs/Image ``mono16``      0 = nothing, i = region i (component/instance)
``instances``            vision_msgs/Detection2DArray      the stamped per-frame result: detection 0 is
                                                           the whole image (id ``image``, class
                                                           ``anomalous`` or ``nominal``, score = image
                                                           score), then one per labelled region (id =
                                                           its value in ``instances/labels``); only where
                                                           vision_msgs imports (replay bags: always,
                                                           through :mod:`semanom_ros.io.vision_types`)
=======================  ================================  ============================================

Every image and the detections carry the input frame's header (stamp and frame_id), so
message_filters and bag tools can match them with the camera. std_msgs/Bool and Float32 carry no
header (the standard definitions have none; std_msgs has no stamped scalar); they stay for simple
consumers, and the Detection2DArray is the stamped form of the same result. ``max_output_pixels``
(the node's ``max_published_pixels``) shrinks the images (not the detections, which stay in the
scored frame's pixels) to bound the bandwidth.
"""
from __future__ import annotations

import copy
from typing import Any, Collection

import cv2
import numpy as np

from semanom_ros.core.heatmap import render_heatmap
from semanom_ros.core.result import AnomalyResult

from .images import encode_image

__all__ = [
    "HAVE_VISION_MSGS",
    "IMAGE_KEYS",
    "OUTPUT_KEYS",
    "build_detections",
    "build_output_messages",
    "detection_regions",
    "detection_rows",
    "output_message_types",
    "output_size",
]

# Every key build_output_messages can return, in publishing order (stamped messages first).
OUTPUT_KEYS: tuple[str, ...] = (
    "score_map", "heatmap", "overlay", "overlay/compressed", "instances/labels", "instances", "score", "is_anomalous",
)
# The keys whose messages are images (large; what max_output_pixels bounds).
IMAGE_KEYS: frozenset[str] = frozenset({"score_map", "heatmap", "overlay", "overlay/compressed", "instances/labels"})
JPEG_FORMAT = "bgr8; jpeg compressed bgr8"  # image_transport's compressed format string for a BGR JPEG

try:  # vision_msgs is not on PyPI; it exists in a sourced ROS 2 install (ros-<distro>-vision-msgs).
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    HAVE_VISION_MSGS = True
except ImportError:  # pragma: no cover - depends on the ROS install
    Detection2D = Detection2DArray = ObjectHypothesisWithPose = None
    HAVE_VISION_MSGS = False


def output_message_types() -> dict[str, Any]:
    """Message class of every key :func:`build_output_messages` can return here (for publishers)."""
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Bool, Float32

    types: dict[str, Any] = {
        "is_anomalous": Bool,
        "score": Float32,
        "score_map": Image,
        "heatmap": Image,
        "overlay": Image,
        "overlay/compressed": CompressedImage,
        "instances/labels": Image,
    }
    if HAVE_VISION_MSGS:  # pragma: no cover - vision_msgs is not on PyPI
        types["instances"] = Detection2DArray
    return types


def output_size(height: int, width: int, max_output_pixels: int) -> tuple[int, int]:
    """(height, width) of the output images: the frame's, shrunk (aspect kept) to at most ``max_output_pixels``.

    0 (or a negative number) means no bound.
    """
    if max_output_pixels <= 0 or height * width <= max_output_pixels:
        return height, width
    factor = (max_output_pixels / float(height * width)) ** 0.5
    return max(1, int(height * factor)), max(1, int(width * factor))


def _shrink(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if tuple(array.shape[:2]) == size:
        return array
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


def _jpeg(bgr: np.ndarray, header: Any, quality: int) -> Any:
    from sensor_msgs.msg import CompressedImage

    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise ValueError(f"build_output_messages: OpenCV could not encode a {bgr.shape} overlay as JPEG")
    msg = CompressedImage(format=JPEG_FORMAT)
    msg.header = copy.deepcopy(header)
    msg.data = encoded.tobytes()
    return msg


def build_output_messages(
    result: AnomalyResult,
    rgb: np.ndarray,
    header: Any,
    overlay_bgr: np.ndarray | None = None,
    detections: bool = True,
    *,
    keys: Collection[str] | None = None,
    max_output_pixels: int = 0,
    jpeg_quality: int = 80,
) -> dict[str, Any]:
    """Build the rclpy messages of one processed frame, keyed by topic name relative to the node (see module doc).

    ``header`` (std_msgs/Header) is copied into every stamped message, so outputs carry the input
    frame's stamp and frame_id. ``rgb`` is the frame the result was computed on; it fixes the
    expected size of the score map, labels and overlay (a mismatch is a caller bug: ValueError).
    ``keys`` limits the work to those topics (e.g. the ones somebody subscribes to; None = all);
    ``overlay`` and ``overlay/compressed`` need ``overlay_bgr``. ``detections=False`` leaves out the
    Detection2DArray even where vision_msgs imports. ``max_output_pixels`` bounds the image sizes
    (see :func:`output_size`); ``jpeg_quality`` is the quality of ``overlay/compressed``.
    """
    from std_msgs.msg import Bool, Float32

    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    for name, array in (("score_map", result.score_map), ("labels", result.labels), ("overlay", overlay_bgr)):
        if array is not None and tuple(array.shape[:2]) != (height, width):
            raise ValueError(
                f"build_output_messages: {name} is {array.shape[1]}x{array.shape[0]} but the frame is "
                f"{width}x{height}; pass the frame the result was computed on"
            )
    wanted = set(OUTPUT_KEYS if keys is None else keys)
    size = output_size(height, width, max_output_pixels)
    messages: dict[str, Any] = {}
    score_map = None
    if wanted & {"score_map", "heatmap"}:
        score_map = _shrink(np.asarray(result.score_map, np.float32), size)
    if "score_map" in wanted:
        messages["score_map"] = encode_image(score_map, "32FC1", header)
    if "heatmap" in wanted:
        messages["heatmap"] = encode_image(render_heatmap(score_map, result.threshold), "bgr8", header)
    if overlay_bgr is not None and wanted & {"overlay", "overlay/compressed"}:
        overlay_small = _shrink(overlay_bgr, size)
        if "overlay" in wanted:
            messages["overlay"] = encode_image(overlay_small, "bgr8", header)
        if "overlay/compressed" in wanted:
            messages["overlay/compressed"] = _jpeg(overlay_small, header, jpeg_quality)
    if "instances/labels" in wanted:
        labels = _shrink(np.asarray(result.labels, np.uint16), size, nearest=True)
        messages["instances/labels"] = encode_image(labels, "mono16", header)
    if detections and HAVE_VISION_MSGS and "instances" in wanted:
        messages["instances"] = build_detections(result, header, (height, width))
    if "score" in wanted:
        messages["score"] = Float32(data=float(result.score))
    if "is_anomalous" in wanted:
        messages["is_anomalous"] = Bool(data=bool(result.is_anomalous))
    return messages


def detection_regions(result: AnomalyResult) -> list[tuple[int, str, float, tuple[int, int, int, int]]]:
    """(label value, class id, score, (x, y, w, h)) for every labelled region of the result.

    Instances (instance/combined mode) come first, with their detector label and anomaly score;
    then every component that is not an instance (patch mode: all of them), as class 'anomaly'
    with its peak score. The label value is the region's pixel value in ``instances/labels``.
    """
    regions: list[tuple[int, str, float, tuple[int, int, int, int]]] = []
    instance_labels = set()
    for inst in result.instances or []:
        index = int(getattr(inst, "index", 0))
        instance_labels.add(index)
        regions.append((index, str(getattr(inst, "label", "object")), float(inst.score), tuple(inst.box)))
    for comp in result.components:
        if comp.label in instance_labels:
            continue
        regions.append((int(comp.label), "anomaly", float(comp.peak_score), tuple(comp.bbox)))
    return regions


DetectionRow = tuple[str, str, float, float, float, float, float]


def detection_rows(result: AnomalyResult, image_size: tuple[int, int]) -> list[DetectionRow]:
    """(id, class_id, score, centre x, centre y, width, height) of every detection, in input pixels.

    Row 0 is the image-level result: id ``image``, the whole frame as its box, class ``anomalous``
    or ``nominal`` (the frame decision) and the image score. Then one row per labelled region
    (:func:`detection_regions`), its id the region's value in ``instances/labels``.
    """
    height, width = image_size
    rows = [("image", "anomalous" if result.is_anomalous else "nominal", float(result.score),
             width / 2.0, height / 2.0, float(width), float(height))]
    for label, class_id, score, (x, y, w, h) in detection_regions(result):
        rows.append((str(label), class_id, score, x + w / 2.0, y + h / 2.0, float(w), float(h)))
    return rows


def build_detections(result: AnomalyResult, header: Any, image_size: tuple[int, int] | None = None) -> Any:
    """vision_msgs/Detection2DArray of :func:`detection_rows` (needs vision_msgs; rosbags: io.vision_types).

    ``image_size`` (height, width) defaults to the score map's.
    """
    if not HAVE_VISION_MSGS:
        raise ImportError("vision_msgs is not importable; install ros-<distro>-vision-msgs and source ROS 2")
    size = image_size or tuple(int(v) for v in np.shape(result.score_map)[:2])
    array = Detection2DArray()
    array.header = copy.deepcopy(header)
    for det_id, class_id, score, cx, cy, w, h in detection_rows(result, size):
        det = Detection2D()
        det.header = copy.deepcopy(header)
        det.id = det_id  # links a region's detection to its pixels in instances/labels
        centre = det.bbox.center
        if hasattr(centre, "position"):  # vision_msgs >= 4 (Humble+): vision_msgs/Pose2D
            centre.position.x, centre.position.y = cx, cy
        else:  # vision_msgs 3 (Foxy/Galactic): geometry_msgs/Pose2D
            centre.x, centre.y = cx, cy
        det.bbox.size_x, det.bbox.size_y = w, h
        hyp = ObjectHypothesisWithPose()
        if hasattr(hyp, "hypothesis"):  # vision_msgs >= 4
            hyp.hypothesis.class_id, hyp.hypothesis.score = class_id, score
        else:  # vision_msgs 3
            hyp.id, hyp.score = class_id, score
        det.results.append(hyp)
        array.detections.append(det)
    return array
