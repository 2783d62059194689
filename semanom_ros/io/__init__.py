"""I/O layer: sensor_msgs images <-> numpy, frames from rosbag2 bags and image folders.

Importing this package does not import rclpy (sensor_msgs is imported lazily
only when a message is built without an explicit message class); the monitor's
output messages (:mod:`semanom_ros.io.messages`) need the rclpy message packages
and are imported from their module.
"""

from .bags import iter_bag_frames, list_image_topics, ros2_typestore
from .bagwrite import make_compressed_msg, make_image_msg, write_image_bag
from .folders import iter_folder_frames
from .frame_types import BAG_SUFFIXES, IMAGE_EXTENSIONS, IMAGE_MSGTYPES, Frame, SkipStats
from .frames import iter_frames
from .images import (
    ENCODABLE_ENCODINGS,
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_image,
    encode_compressed,
    encode_image,
)

__all__ = [
    "BAG_SUFFIXES",
    "ENCODABLE_ENCODINGS",
    "IMAGE_EXTENSIONS",
    "IMAGE_MSGTYPES",
    "SUPPORTED_ENCODINGS",
    "Frame",
    "ImageDecodeError",
    "SkipStats",
    "decode_image",
    "encode_compressed",
    "encode_image",
    "iter_bag_frames",
    "iter_folder_frames",
    "iter_frames",
    "list_image_topics",
    "make_compressed_msg",
    "make_image_msg",
    "ros2_typestore",
    "write_image_bag",
]
