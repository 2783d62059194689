"""Fast DDS shared-memory settings for big output images, applied to the monitor process by default.

Fast DDS' default shared-memory segment is 512 KB. A 1.5 MB image goes out as ~24 fragments, and
while a busy subscriber has not read them the writer reuses their buffers, so a BEST-EFFORT
subscriber loses whole images (measured at 30 Hz, 960x540: overlay 16 %, heat map 20 %, labels
22 % delivered; reliable ones get lost fragments re-sent). With a 64 MB segment in the publishing
process every topic reached both a reliable and a best-effort subscriber (bench/bench_output_delivery.py).

:func:`apply_large_image_profile` points Fast DDS at :data:`LARGE_IMAGES_PROFILE` (the same XML as
config/fastdds_large_images.xml, which other processes can use) before rclpy starts, unless the
user already chose a profile, another RMW is selected, or ``SEMANOM_DDS_PROFILE=off``.
"""
from __future__ import annotations

import atexit
import os
import tempfile
from typing import MutableMapping

__all__ = ["LARGE_IMAGES_PROFILE", "apply_large_image_profile"]

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3.x, 2.x

LARGE_IMAGES_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>semanom_shm_large</transport_id>
        <type>SHM</type>
        <segment_size>67108864</segment_size>
        <port_queue_capacity>2048</port_queue_capacity>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>semanom_udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="semanom_large_images" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>semanom_shm_large</transport_id>
          <transport_id>semanom_udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def apply_large_image_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Write the profile to a private temporary file and point Fast DDS at it; returns its path.

    None (nothing changed) when ``SEMANOM_DDS_PROFILE`` is ``off``, ``RMW_IMPLEMENTATION`` is not
    Fast DDS, or a profile file is already set. Call it before ``rclpy.init``.
    """
    env = os.environ if environ is None else environ
    if env.get("SEMANOM_DDS_PROFILE", "").lower() in ("off", "0", "false", "no"):
        return None
    if not env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps"):
        return None
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return None
    fd, path = tempfile.mkstemp(prefix="semanom_fastdds_", suffix=".xml")  # private: mode 0600, unique name
    with os.fdopen(fd, "w") as handle:
        handle.write(LARGE_IMAGES_PROFILE)
    atexit.register(_remove, path)
    # Fast DDS 3 (Kilted and newer) reads FASTDDS_...; 2.x (Humble to Jazzy) FASTRTPS_... (3 warns about it).
    old_fast_dds = env.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy")
    for name in PROFILE_VARIABLES if old_fast_dds else PROFILE_VARIABLES[:1]:
        env[name] = path
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
