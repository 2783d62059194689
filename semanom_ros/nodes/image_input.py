"""The camera input both nodes subscribe to.

Topic and message class from the ``image`` name and the ``input_type`` parameter, and the sensor-data
QoS with a reliability parameter and a small depth.
"""
from __future__ import annotations

from typing import Any

from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

__all__ = ["image_input", "sensor_qos"]


def image_input(resolved_topic: str, input_type: str) -> tuple[str, Any]:
    """Topic and message class a node subscribes to, from its resolved ``image`` topic and ``input_type``.

    auto: compressed when the topic ends in /compressed.
    """
    kind = "compressed" if input_type == "auto" and resolved_topic.endswith("/compressed") else input_type
    if kind == "compressed":
        # image_transport publishes CompressedImage on '<base>/compressed'.
        if resolved_topic.endswith("/compressed"):
            return resolved_topic, CompressedImage
        return resolved_topic.rstrip("/") + "/compressed", CompressedImage
    return resolved_topic, Image


def sensor_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Sensor-data QoS (keep last ``depth``).

    ``reliability``: 'reliable' or 'best_effort' ('reliable' only matches reliable publishers,
    'best_effort' matches both). Depth 1 keeps only the newest frame in the reader history, but
    replaces the others there without a trace; the monitor node takes a deeper history and drops
    (and counts) old frames itself.
    """
    return QoSProfile(
        history=qos_profile_sensor_data.history,
        depth=depth,
        reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=qos_profile_sensor_data.durability,
    )
