"""rclpy messages <-> rosbag2 records: type names, CDR bytes, headers from bag messages."""
from __future__ import annotations

from typing import Any

from .bags import ros2_typestore


def ros_msgtype(msg: Any) -> str:
    """'std_msgs/msg/Bool' for an rclpy std_msgs.msg.Bool instance (the name rosbag2 records)."""
    cls = type(msg)
    package = cls.__module__.split(".")[0]
    return f"{package}/msg/{cls.__name__}"


def serialize_rclpy(msg: Any) -> bytes:
    """CDR bytes of an rclpy message (as a subscription receives them)."""
    from rclpy.serialization import serialize_message

    return bytes(serialize_message(msg))


def canonical_cdr(msg: Any) -> tuple[str, bytes]:
    """(type name, CDR bytes with zeroed padding) of an rclpy message, for a reproducible bag.

    rclpy's serializer leaves alignment padding bytes uninitialised, so two serialisations of one
    message can differ in those bytes; a round trip through rosbags' serializer zeroes them and
    makes the output bag byte-for-byte reproducible (the message content is untouched).
    """
    msgtype = ros_msgtype(msg)
    typestore = ros2_typestore()
    raw = serialize_rclpy(msg)
    return msgtype, bytes(typestore.serialize_cdr(typestore.deserialize_cdr(raw, msgtype), msgtype))


def rclpy_header(header: Any) -> Any:
    """Convert a rosbags std_msgs/Header to an rclpy std_msgs.msg.Header (same stamp and frame_id)."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    stamp = Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
    return Header(stamp=stamp, frame_id=str(header.frame_id))


__all__ = ["canonical_cdr", "rclpy_header", "ros_msgtype", "serialize_rclpy"]
