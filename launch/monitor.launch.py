"""Start the semantic anomaly monitor (a lifecycle node) on a camera topic, optionally with RViz.

    ros2 launch semanom_ros monitor.launch.py image_topic:=/camera/image_raw \\
        bank_path:=/data/banks/highway rviz:=true

Arguments (``ros2 launch semanom_ros monitor.launch.py --show-args`` lists them):
  image_topic  camera topic; sensor_msgs/Image, or CompressedImage when it ends in /compressed
               (default /camera/image_raw)
  bank_path    nominal bank directory; empty = the value in params_file
  params_file  node parameters (default: <share>/semanom_ros/config/monitor.yaml)
  compressed   true: subscribe to '<image_topic>/compressed' (sensor_msgs/CompressedImage)
  namespace    namespace of the node (its topics become /<namespace>/semanom_monitor/...)
  node_name    node name (default semanom_monitor)
  autostart    configure and activate the lifecycle node at start-up (default true)
  rviz         start RViz with config/semanom.rviz (default false): camera (raw or compressed, through
               image_transport), overlay, heat map, score map; the filled-in copy of the
               configuration is a temporary file, deleted when the launch ends
  use_sim_time use /clock (bag playback with --clock)
  log_level    node log level (debug, info, warn, error)

Autostart, portable across Humble, Jazzy and later: the node's own ``autostart`` parameter makes it
configure and activate itself once it is up (the same code path as ``ros2 lifecycle set``), so this
file does not depend on launch_ros' ``LifecycleNode(autostart=...)`` (Jazzy+) or on ChangeState
event chains. The lifecycle services stay available for manual control (``autostart:=false``).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnShutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = "semanom_ros"
DEFAULT_NODE_NAME = "semanom_monitor"
# config/semanom.rviz names the node's outputs under this namespace and shows the camera in this display.
RVIZ_TEMPLATE_NAMESPACE = "/" + DEFAULT_NODE_NAME
RVIZ_CAMERA_DISPLAY = "Camera"


def truthy(value: str) -> bool:
    """A launch argument's true/false text as a bool."""
    return value.strip().lower() in ("1", "true", "yes", "on")


def camera_topic_and_transport(image_topic: str, compressed: bool) -> tuple[str, str]:
    """The topic the monitor subscribes to and its image_transport transport ('raw' or 'compressed').

    The node's rule: a name ending in /compressed, or compressed:=true, means sensor_msgs/CompressedImage
    on '<base>/compressed' (what image_transport publishes).
    """
    topic = image_topic.rstrip("/")
    if topic.endswith("/compressed"):
        return topic, "compressed"
    if compressed:
        return topic + "/compressed", "compressed"
    return topic, "raw"


def rviz_config_text(template: str, camera_topic: str, transport: str, output_namespace: str) -> str:
    """config/semanom.rviz (YAML) with the camera topic and the monitor's output namespace filled in.

    RViz's Image display subscribes through image_transport. rviz2 Humble and Jazzy take the transport
    from the topic's last name ('<base>/compressed' -> base topic, transport 'compressed'), so the camera
    keeps its full name; later rviz2 also read the 'Transport Override' under Topic (empty: from the name).
    Either way a compressed camera needs the compressed image_transport plugin (compressed_image_transport).
    """
    config = yaml.safe_load(template)
    for display in config["Visualization Manager"]["Displays"]:
        topic = display.get("Topic")
        if not isinstance(topic, dict):
            continue
        if display.get("Name") == RVIZ_CAMERA_DISPLAY:
            topic["Value"] = camera_topic
            topic["Transport Override"] = "" if transport == "raw" else transport
        elif str(topic.get("Value", "")).startswith(RVIZ_TEMPLATE_NAMESPACE + "/"):
            topic["Value"] = output_namespace + topic["Value"][len(RVIZ_TEMPLATE_NAMESPACE):]
    return yaml.safe_dump(config, sort_keys=False)


def write_rviz_config(text: str) -> str:
    """Write a generated RViz configuration into a new private temporary folder; returns its path."""
    folder = tempfile.mkdtemp(prefix="semanom_rviz_")
    path = os.path.join(folder, "semanom.rviz")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def remove_rviz_config(path: str) -> None:
    """Delete a configuration written by write_rviz_config, with its folder."""
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def launch_setup(context, *args, **kwargs) -> list:
    """The actions, once the launch arguments are known (an OpaqueFunction)."""
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    share = get_package_share_directory(PACKAGE)
    image_topic = arg("image_topic")
    namespace = arg("namespace").strip("/")
    node_name = arg("node_name") or DEFAULT_NODE_NAME
    params_file = arg("params_file") or os.path.join(share, "config", "monitor.yaml")
    compressed = truthy(arg("compressed"))

    # Later entries override earlier ones: the launch arguments win over the parameter file.
    overrides = {"autostart": truthy(arg("autostart")), "use_sim_time": truthy(arg("use_sim_time"))}
    if arg("bank_path"):
        overrides["bank_path"] = os.path.expanduser(arg("bank_path"))
    if compressed:
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
    if truthy(arg("rviz")):
        with open(os.path.join(share, "config", "semanom.rviz"), encoding="utf-8") as f:
            template = f.read()
        camera_topic, transport = camera_topic_and_transport(image_topic, compressed)
        output_namespace = "/" + "/".join(p for p in (namespace, node_name) if p)
        rviz_config = write_rviz_config(rviz_config_text(template, camera_topic, transport, output_namespace))
        actions += [
            Node(
                package="rviz2",
                executable="rviz2",
                name="semanom_rviz",
                arguments=["-d", rviz_config],
                parameters=[{"use_sim_time": truthy(arg("use_sim_time"))}],
                output="log",
            ),
            # RViz reads the file at start-up; nothing needs it after the launch ends.
            RegisterEventHandler(
                OnShutdown(on_shutdown=lambda event, context: remove_rviz_config(rviz_config))
            ),
        ]
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
                description="Nominal bank directory (semanom-bank build); "
                "empty keeps the value in params_file",
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
            DeclareLaunchArgument(
                "node_name", default_value=DEFAULT_NODE_NAME, description="Monitor node name",
            ),
            DeclareLaunchArgument(
                "autostart", default_value="true", choices=["true", "false"],
                description="Configure and activate the lifecycle node at start-up",
            ),
            DeclareLaunchArgument(
                "rviz", default_value="false", choices=["true", "false"],
                description="Start RViz showing the camera, the overlay, the heat map and the score map",
            ),
            DeclareLaunchArgument(
                "use_sim_time", default_value="false", choices=["true", "false"],
                description="Use /clock (bag playback with --clock)",
            ),
            DeclareLaunchArgument(
                "log_level", default_value="info", choices=["debug", "info", "warn", "error"],
                description="Log level of the monitor node",
            ),
            OpaqueFunction(function=launch_setup),
        ]
    )
