"""The launch file launch/monitor.launch.py: the RViz configuration it generates and its clean-up.

The RViz configuration: camera topic and image_transport transport for raw and compressed cameras,
the node's output namespace, the heat map display; and the removal of that temporary file when the
launch ends.

launch and launch_ros are not on PyPI: where they (or ament_index_python) are missing, small stand-ins
with the same names and the few attributes used here are put into sys.modules for these tests only.
Where ROS 2 is installed the real modules are used.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "monitor.launch.py"

LAUNCH_ARGUMENTS = {
    "image_topic": "/camera/image_raw",
    "bank_path": "",
    "params_file": "",
    "compressed": "false",
    "namespace": "",
    "node_name": "semanom_monitor",
    "autostart": "true",
    "rviz": "true",
    "use_sim_time": "false",
    "log_level": "info",
}


# ----------------------------------------------------------------------------- stand-ins (tests only)
class _Action:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _DeclareLaunchArgument(_Action):
    @property
    def name(self) -> str:
        return self.args[0]


class _LaunchDescription:
    def __init__(self, entities):
        self.entities = list(entities)


class _LaunchConfiguration:
    def __init__(self, name: str):
        self.name = name

    def perform(self, context) -> str:
        return context.launch_configurations[self.name]


class _RegisterEventHandler:
    def __init__(self, event_handler):
        self.event_handler = event_handler


class _OnShutdown:
    def __init__(self, *, on_shutdown):
        self.on_shutdown = on_shutdown

    def handle(self, event, context):
        return self.on_shutdown(event, context)


def _is_installed(module: str) -> bool:
    # The repository's own launch/ folder is a namespace package on the path, not the launch library.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


REAL_LAUNCH = _is_installed("launch")


def _stand_ins() -> dict[str, types.ModuleType]:
    def module(name: str, **attributes) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attributes)
        return m

    modules = {}
    if not REAL_LAUNCH:
        modules["launch"] = module("launch", LaunchDescription=_LaunchDescription)
        modules["launch.actions"] = module(
            "launch.actions", DeclareLaunchArgument=_DeclareLaunchArgument, OpaqueFunction=_Action,
            RegisterEventHandler=_RegisterEventHandler,
        )
        modules["launch.event_handlers"] = module("launch.event_handlers", OnShutdown=_OnShutdown)
        modules["launch.substitutions"] = module(
            "launch.substitutions", LaunchConfiguration=_LaunchConfiguration
        )
    if not _is_installed("launch_ros"):
        modules["launch_ros"] = module("launch_ros")
        modules["launch_ros.actions"] = module("launch_ros.actions", LifecycleNode=_Action, Node=_Action)
    if not _is_installed("ament_index_python"):
        def share_not_set(package: str) -> str:
            raise LookupError(f"test stand-in: {package} share directory not set")

        modules["ament_index_python"] = module("ament_index_python")
        modules["ament_index_python.packages"] = module(
            "ament_index_python.packages", get_package_share_directory=share_not_set
        )
    return modules


@pytest.fixture
def launch_module(monkeypatch, tmp_path):
    """The launch file as a module, its share directory pointing at a copy of config/."""
    for name, module in _stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("semanom_monitor_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    share = tmp_path / "share" / "semanom_ros"
    shutil.copytree(ROOT / "config", share / "config")
    monkeypatch.setattr(module, "get_package_share_directory", lambda package: str(share))
    # Generated files go under tmp_path, so the test sees exactly what the launch wrote.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return module


def _context(**arguments):
    values = {**LAUNCH_ARGUMENTS, **arguments}
    if REAL_LAUNCH:
        from launch import LaunchContext

        context = LaunchContext()
        context.launch_configurations.update(values)
        return context
    return types.SimpleNamespace(launch_configurations=values)


def _shutdown_event():
    if REAL_LAUNCH:
        from launch.events import Shutdown

        return Shutdown()
    return None


def _displays(config_text: str) -> dict[str, dict]:
    config = yaml.safe_load(config_text)
    return {d["Name"]: d for d in config["Visualization Manager"]["Displays"]}


def _template() -> str:
    return (ROOT / "config" / "semanom.rviz").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- camera topic and transport
@pytest.mark.parametrize(
    ("image_topic", "compressed", "expected"),
    [
        ("/camera/image_raw", False, ("/camera/image_raw", "raw")),
        ("/camera/image_raw/compressed", False, ("/camera/image_raw/compressed", "compressed")),
        ("/camera/image_raw", True, ("/camera/image_raw/compressed", "compressed")),
        ("/camera/image_raw/compressed", True, ("/camera/image_raw/compressed", "compressed")),
        ("/camera/image_raw/", True, ("/camera/image_raw/compressed", "compressed")),
    ],
)
def test_camera_topic_and_transport_follow_the_node_rule(launch_module, image_topic, compressed, expected):
    assert launch_module.camera_topic_and_transport(image_topic, compressed) == expected


def test_rviz_config_raw_camera(launch_module):
    text = launch_module.rviz_config_text(_template(), "/front/image_raw", "raw", "/semanom_monitor")
    camera = _displays(text)["Camera"]["Topic"]
    assert camera["Value"] == "/front/image_raw"
    assert camera["Transport Override"] == ""


def test_rviz_config_compressed_camera_keeps_full_topic_and_sets_transport(launch_module):
    # rviz2 Humble/Jazzy derive base topic + transport from '<base>/compressed'; stripping the suffix
    # made RViz subscribe to a raw topic that nobody publishes.
    text = launch_module.rviz_config_text(_template(), "/front/image_raw/compressed", "compressed", "/x")
    camera = _displays(text)["Camera"]
    assert camera["Class"] == "rviz_default_plugins/Image"
    assert camera["Topic"]["Value"] == "/front/image_raw/compressed"
    assert camera["Topic"]["Transport Override"] == "compressed"


def test_rviz_config_outputs_follow_namespace_and_include_heat_map(launch_module):
    text = launch_module.rviz_config_text(_template(), "/cam", "raw", "/robot1/monitor")
    displays = _displays(text)
    topics = {name: d["Topic"]["Value"] for name, d in displays.items()}
    assert topics["Overlay"] == "/robot1/monitor/overlay"
    assert topics["Heat map"] == "/robot1/monitor/heatmap"
    assert topics["Score map"] == "/robot1/monitor/score_map"
    assert topics["Instance labels"] == "/robot1/monitor/instances/labels"
    assert displays["Heat map"]["Class"] == "rviz_default_plugins/Image"
    assert displays["Heat map"]["Enabled"] is True
    # The node publishes its outputs reliable (DESIGN.md); the camera stays best effort.
    assert displays["Heat map"]["Topic"]["Reliability Policy"] == "Reliable"
    assert displays["Camera"]["Topic"]["Reliability Policy"] == "Best Effort"


def test_template_itself_names_heat_map_beside_overlay():
    names = list(_displays(_template()))
    assert names.index("Heat map") == names.index("Overlay") + 1


# ----------------------------------------------------------------------------- launch actions and cleanup
def _generated_configs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("semanom_rviz_*/semanom.rviz"))


def test_launch_with_rviz_writes_config_and_removes_it_at_shutdown(launch_module, tmp_path):
    context = _context(image_topic="/cam/image_raw", compressed="true", namespace="r1")
    actions = launch_module.launch_setup(context)

    configs = _generated_configs(tmp_path)
    assert len(configs) == 1
    displays = _displays(configs[0].read_text(encoding="utf-8"))
    assert displays["Camera"]["Topic"]["Value"] == "/cam/image_raw/compressed"
    assert displays["Overlay"]["Topic"]["Value"] == "/r1/semanom_monitor/overlay"

    handlers = [a for a in actions if isinstance(a, launch_module.RegisterEventHandler)]
    assert len(handlers) == 1
    handlers[0].event_handler.handle(_shutdown_event(), context)
    assert not configs[0].exists()
    assert not configs[0].parent.exists()


def test_launch_without_rviz_writes_nothing(launch_module, tmp_path):
    actions = launch_module.launch_setup(_context(rviz="false"))
    assert len(actions) == 1
    assert _generated_configs(tmp_path) == []


def test_remove_rviz_config_tolerates_a_missing_file(launch_module):
    path = launch_module.write_rviz_config("Panels: []\n")
    launch_module.remove_rviz_config(path)
    launch_module.remove_rviz_config(path)
    assert not Path(path).parent.exists()


def test_launch_description_declares_the_documented_arguments(launch_module):
    description = launch_module.generate_launch_description()
    declared = {e.name for e in description.entities if hasattr(e, "name")}
    assert set(LAUNCH_ARGUMENTS) <= declared
