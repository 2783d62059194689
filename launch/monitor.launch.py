"""Start the semantic anomaly monitor (a lifecycle node) on a camera topic, optionally with RViz.

    ros2 launch semanom_ros monitor.launch.py image_topic:=/camera/image_raw bank_path:=/data/banks/highway rviz:=true

Arguments (``ros2 launch semanom_ros monitor.launch.py --show-args`` lists them):
  image_topic  camera topic; sensor_msgs/Image, or CompressedImage when it ends in /compressed
               (default /camera/image_raw)
  bank_path    nominal bank directory; empty = the value in params_file
  params_file  node parameters (default: <share>/semanom_ros/config/monitor.yaml)
  compressed   true: subscribe to '<image_topic>/compressed' (sensor_msgs/CompressedImage)
  namespace    namespace of the node (its topics become /<namespace>/semanom_monitor/...)
  node_name    node name (default semanom_monitor)
  autostart    configure and activate the lifecycle node at start-up (default true)
  rviz         start RViz with config/semanom.rviz (default false)
  use_sim_time use /clock (bag playback with --clock)
  log_level    node log level (debug, info, warn, error)

Autostart, portable across Humble, Jazzy and later: the node's own ``autostart`` parameter makes it
configure and activate itself once it is up (the same code path as ``ros2 lifecycle set``), so this
file does not depend on launch_ros' ``LifecycleNode(autostart=...)`` (Jazzy+) or on ChangeState
event chains. The lifecycle services stay available for manual control (``autostart:=false``).
"""
from __future__ import annotations

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = "semanom_ros"
DEFAULT_NODE_NAME = "semanom_monitor"


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _rviz_config(share: str, camera_topic: str, output_prefix: str) -> str:
    """config/semanom.rviz with the camera topic and the node's output namespace filled in."""
    with open(os.path.join(share, "config", "semanom.rviz"), encoding="utf-8") as f:
        text = f.read()
    text = text.replace("/camera/image_raw", camera_topic).replace("/semanom_monitor/", output_prefix + "/")
    handle, path = tempfile.mkstemp(prefix="semanom_", suffix=".rviz")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _launch_setup(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    share = get_package_share_directory(PACKAGE)
    image_topic = arg("image_topic")
    namespace = arg("namespace").strip("/")
    node_name = arg("node_name") or DEFAULT_NODE_NAME
    params_file = arg("params_file") or os.path.join(share, "config", "monitor.yaml")

    # Later entries override earlier ones: the launch arguments win over the parameter file.
    overrides = {"autostart": _truthy(arg("autostart")), "use_sim_time": _truthy(arg("use_sim_time"))}
    if arg("bank_path"):
        overrides["bank_path"] = os.path.expanduser(arg("bank_path"))
    if _truthy(arg("compressed")):
        overrides["input_type"] = "compressed"

    monitor = LifecycleNode(
        package=PACKAGE,
        executable="monitor_node",
        name=node_name,
        namespace=namespace,
        parameters=[params_file, overrides],
        remappings=[("image", image_topic)],
        arguments=["--ros-args", "--log-level", arg("log_level")],
        output="screen",
        emulate_tty=True,
    )
    actions = [monitor]
    if _truthy(arg("rviz")):
        camera = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
        prefix = "/" + "/".join(p for p in (namespace, node_name) if p)
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="semanom_rviz",
                arguments=["-d", _rviz_config(share, camera, prefix)],
                parameters=[{"use_sim_time": _truthy(arg("use_sim_time"))}],
                output="log",
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image_topic", default_value="/camera/image_raw",
                description="Camera topic the monitor subscribes to (remaps the node's 'image'); "
                "a name ending in /compressed selects sensor_msgs/CompressedImage",
            ),
            DeclareLaunchArgument(
                "bank_path", default_value="",
                description="Nominal bank directory (semanom-bank build); empty keeps the value in params_file",
            ),
            DeclareLaunchArgument(
                "params_file", default_value=os.path.join(share, "config", "monitor.yaml"),
                description="YAML file with the monitor's ROS parameters",
            ),
            DeclareLaunchArgument(
                "compressed", default_value="false", choices=["true", "false"],
                description="Subscribe to '<image_topic>/compressed' (sensor_msgs/CompressedImage)",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace of the monitor node and its topics",
            ),
            DeclareLaunchArgument("node_name", default_value=DEFAULT_NODE_NAME, description="Monitor node name"),
            DeclareLaunchArgument(
                "autostart", default_value="true", choices=["true", "false"],
                description="Configure and activate the lifecycle node at start-up",
            ),
            DeclareLaunchArgument(
                "rviz", default_value="false", choices=["true", "false"],
                description="Start RViz showing the camera, the overlay and the score map",
            ),
            DeclareLaunchArgument(
                "use_sim_time", default_value="false", choices=["true", "false"],
                description="Use /clock (bag playback with --clock)",
            ),
            DeclareLaunchArgument(
                "log_level", default_value="info", choices=["debug", "info", "warn", "error"],
                description="Log level of the monitor node",
            ),
            OpaqueFunction(function=_launch_setup),
        ]
    )
