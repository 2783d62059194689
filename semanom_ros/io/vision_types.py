"""vision_msgs (ROS 2, version 4: Humble and newer) for rosbags, so bags always carry detections.

vision_msgs is not on PyPI, so rclpy cannot build its messages in a pip-only setup; rosbags can
serialise any message whose definition it knows. The definitions below are vision_msgs 4.x's
(field names, types and order as in ros-<distro>-vision-msgs), registered into a rosbags
typestore by :func:`vision_typestore`; :func:`detection_array` builds a Detection2DArray as a
rosbags message from :func:`semanom_ros.io.messages.detection_rows` and a header.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .bags import ros2_typestore

__all__ = ["DETECTION2D_ARRAY", "VISION_MSG_DEFINITIONS", "detection_array", "vision_typestore"]

DETECTION2D_ARRAY = "vision_msgs/msg/Detection2DArray"

VISION_MSG_DEFINITIONS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\nvision_msgs/BoundingBox2D bbox\n"
        "string id\n"
    ),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}


def vision_typestore() -> Any:
    """The shared ROS 2 rosbags typestore with the vision_msgs definitions registered (idempotent)."""
    from rosbags.typesys import get_types_from_msg  # noqa: PLC0415

    typestore = ros2_typestore()
    if DETECTION2D_ARRAY not in typestore.fielddefs:
        types: dict[str, Any] = {}
        for name, text in VISION_MSG_DEFINITIONS.items():
            types.update(get_types_from_msg(text, name))
        typestore.register(types)
    return typestore


def detection_array(rows: Sequence[tuple[str, str, float, float, float, float, float]], header: Any) -> Any:
    """A rosbags vision_msgs/Detection2DArray: one Detection2D per row (id, class_id, score, cx, cy, w, h).

    ``header`` is a rosbags std_msgs/Header; every detection carries it, as vision_msgs expects.
    """
    ts = vision_typestore()
    t = ts.types
    identity_pose = t["geometry_msgs/msg/PoseWithCovariance"](
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
            orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        covariance=np.zeros(36, np.float64),
    )
    detections = []
    for det_id, class_id, score, cx, cy, width, height in rows:
        hypothesis = t["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=str(class_id), score=float(score)),
            pose=identity_pose,
        )
        bbox = t["vision_msgs/msg/BoundingBox2D"](
            center=t["vision_msgs/msg/Pose2D"](
                position=t["vision_msgs/msg/Point2D"](x=float(cx), y=float(cy)), theta=0.0
            ),
            size_x=float(width),
            size_y=float(height),
        )
        detection = t["vision_msgs/msg/Detection2D"](header=header, results=[hypothesis], bbox=bbox, id=str(det_id))
        detections.append(detection)
    return t[DETECTION2D_ARRAY](header=header, detections=detections)
