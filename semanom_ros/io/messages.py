"""The monitor's output messages, built from one AnomalyResult (pure message construction, no node).

The monitor node publishes these; ``semanom-replay`` serialises the same messages into a bag, so
both always agree on what each topic holds. Topic keys (relative to the node's private namespace):

=====================  ================================  ===============================================
key                    type                              content
=====================  ================================  ===============================================
``is_anomalous``       std_msgs/Bool                     the frame decision
``score``              std_msgs/Float32                  image score (max patch score; compare with the
                                                         threshold)
``score_map``          sensor_msgs/Image ``32FC1``       raw per-pixel scores at frame resolution
``overlay``            sensor_msgs/Image ``bgr8``        heat map on the frame, contours, boxes, scores
                                                         (only when an overlay image is passed)
``instances/labels``   sensor_msgs/Image ``mono16``      0 = nothing, i = region i (component/instance)
``instances``          vision_msgs/Detection2DArray      one detection per labelled region (only where
                                                         vision_msgs imports)
=====================  ================================  ===============================================

std_msgs/Bool and Float32 carry no header (that is the standard message definition); they are
published right after the stamped images of the same frame.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from semanom_ros.core.result import AnomalyResult

from .images import encode_image

__all__ = ["OUTPUT_KEYS", "HAVE_VISION_MSGS", "build_output_messages", "build_detections", "output_message_types"]

# Every key build_output_messages can return, in publishing order (stamped images first).
OUTPUT_KEYS: tuple[str, ...] = ("score_map", "overlay", "instances/labels", "instances", "score", "is_anomalous")

try:  # vision_msgs is not on PyPI; it exists in a sourced ROS 2 install (ros-<distro>-vision-msgs).
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    HAVE_VISION_MSGS = True
except ImportError:  # pragma: no cover - depends on the ROS install
    Detection2D = Detection2DArray = ObjectHypothesisWithPose = None
    HAVE_VISION_MSGS = False


def output_message_types() -> dict[str, Any]:
    """Message class of every key :func:`build_output_messages` can return here (for publishers)."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool, Float32

    types: dict[str, Any] = {
        "is_anomalous": Bool,
        "score": Float32,
        "score_map": Image,
        "overlay": Image,
        "instances/labels": Image,
    }
    if HAVE_VISION_MSGS:  # pragma: no cover - vision_msgs is not on PyPI
        types["instances"] = Detection2DArray
    return types


def build_output_messages(
    result: AnomalyResult,
    rgb: np.ndarray,
    header: Any,
    overlay_bgr: np.ndarray | None = None,
    detections: bool = True,
) -> dict[str, Any]:
    """rclpy messages for one processed frame, keyed by topic name relative to the node (see module doc).

    ``header`` (std_msgs/Header) is copied into every stamped message, so outputs carry the input
    frame's stamp and frame_id. ``rgb`` is the frame the result was computed on; it fixes the
    expected size of the score map, labels and overlay (a mismatch is a caller bug: ValueError).
    ``detections=False`` leaves out the Detection2DArray even where vision_msgs imports.
    """
    from std_msgs.msg import Bool, Float32

    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    for name, array in (("score_map", result.score_map), ("labels", result.labels), ("overlay", overlay_bgr)):
        if array is not None and tuple(array.shape[:2]) != (height, width):
            raise ValueError(
                f"build_output_messages: {name} is {array.shape[1]}x{array.shape[0]} but the frame is "
                f"{width}x{height}; pass the frame the result was computed on"
            )
    messages: dict[str, Any] = {
        "score_map": encode_image(np.asarray(result.score_map, np.float32), "32FC1", header),
    }
    if overlay_bgr is not None:
        messages["overlay"] = encode_image(overlay_bgr, "bgr8", header)
    messages["instances/labels"] = encode_image(np.asarray(result.labels, np.uint16), "mono16", header)
    if detections and HAVE_VISION_MSGS:
        messages["instances"] = build_detections(result, header)
    messages["score"] = Float32(data=float(result.score))
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


def build_detections(result: AnomalyResult, header: Any) -> Any:
    """vision_msgs/Detection2DArray with one Detection2D per labelled region (needs vision_msgs)."""
    if not HAVE_VISION_MSGS:
        raise ImportError("vision_msgs is not importable; install ros-<distro>-vision-msgs and source ROS 2")
    array = Detection2DArray()
    array.header = copy.deepcopy(header)
    for label, class_id, score, (x, y, w, h) in detection_regions(result):
        det = Detection2D()
        det.header = copy.deepcopy(header)
        det.id = str(label)  # links the detection to its pixels in instances/labels
        centre = det.bbox.center
        if hasattr(centre, "position"):  # vision_msgs >= 4 (Humble+): vision_msgs/Pose2D
            centre.position.x, centre.position.y = x + w / 2.0, y + h / 2.0
        else:  # vision_msgs 3 (Foxy/Galactic): geometry_msgs/Pose2D
            centre.x, centre.y = x + w / 2.0, y + h / 2.0
        det.bbox.size_x, det.bbox.size_y = float(w), float(h)
        hyp = ObjectHypothesisWithPose()
        if hasattr(hyp, "hypothesis"):  # vision_msgs >= 4
            hyp.hypothesis.class_id, hyp.hypothesis.score = class_id, score
        else:  # vision_msgs 3
            hyp.id, hyp.score = class_id, score
        det.results.append(hyp)
        array.detections.append(det)
    return array
