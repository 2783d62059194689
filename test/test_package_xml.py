"""package.xml declares what the code imports, and nothing it does not use.

Every ROS package and third-party module imported anywhere in semanom_ros/ or launch/ (module level or
inside a function) maps to a rosdep key, and package.xml lists that key: a new import without a declared
dependency fails here. Keys are rosdistro's: ROS package names, or rosdep/python.yaml entries such as
python3-transformers-pip.
"""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "semanom_ros").rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))

# Imported top-level module -> the rosdep key that provides it.
IMPORT_KEYS = {
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "sensor_msgs": "sensor_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "vision_msgs": "vision_msgs",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "torch": "python3-pytorch-pip",
    "transformers": "python3-transformers-pip",
    "faiss": "python3-faiss",
    "rosbags": "python3-rosbags-pip",
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "sklearn": "python3-sklearn",
    "matplotlib": "python3-matplotlib",
    "PIL": "python3-pil",
}
# Imported, but with no key of their own.
IMPORTS_WITHOUT_KEY = {
    "lz4": "installed with rosbags (a dependency of it); reads lz4 chunks of damaged MCAP files",
    "backports": "backports.zstd, installed with rosbags on Python < 3.14",
    "compression": "compression.zstd, the standard library from Python 3.14 on",
    "sam2": "optional SAM 2 predictor backend, pip only (no rosdep key); README says how to install it",
    "ray": "optional fleet builds (semanom-bank build --ray), imported only then; pip only (requirements.txt, "
           "no rosdep key)",
}
# Declared, but not imported by our code.
KEYS_WITHOUT_IMPORT = {
    "lifecycle_msgs": "the monitor is a lifecycle node: its services and transitions use lifecycle_msgs",
    "rviz2": "monitor.launch.py rviz:=true starts it",
    "compressed_image_transport": "RViz's Image display shows a CompressedImage camera through this plugin",
}


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> files importing it (absolute imports; stdlib and semanom_ros left out)."""
    found: dict[str, set[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "semanom_ros" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def package_xml() -> ET.Element:
    return ET.parse(ROOT / "package.xml").getroot()


def declared_exec_keys() -> set[str]:
    root = package_xml()
    return {e.text.strip() for tag in ("exec_depend", "depend") for e in root.findall(tag)}


def test_sources_found():
    assert any(p.name == "monitor.launch.py" for p in SOURCES)
    assert len(SOURCES) > 10


def test_every_import_has_a_declared_key():
    declared = declared_exec_keys()
    problems = []
    for module, files in sorted(imported_modules().items()):
        if module in IMPORTS_WITHOUT_KEY:
            continue
        key = IMPORT_KEYS.get(module)
        if key is None:
            problems.append(
                f"{module} (imported in {', '.join(sorted(files))}) has no rosdep key: add "
                "<exec_depend>KEY</exec_depend> to package.xml and '{module}': 'KEY' to IMPORT_KEYS "
                "(or to IMPORTS_WITHOUT_KEY with the reason)"
            )
        elif key not in declared:
            problems.append(f"{module} (imported in {', '.join(sorted(files))}) needs <exec_depend>{key}")
    assert not problems, "\n".join(problems)


def test_every_declared_key_is_used():
    used = {IMPORT_KEYS[m] for m in imported_modules() if m in IMPORT_KEYS}
    unused = declared_exec_keys() - used - set(KEYS_WITHOUT_IMPORT)
    assert not unused, f"package.xml declares {sorted(unused)}; nothing in semanom_ros/ or launch/ imports it"


def test_mapping_tables_have_no_stale_entries():
    imported = set(imported_modules())
    assert set(IMPORT_KEYS) <= imported, set(IMPORT_KEYS) - imported
    assert set(IMPORTS_WITHOUT_KEY) <= imported, set(IMPORTS_WITHOUT_KEY) - imported


def test_package_identity_matches_setup_py():
    root = package_xml()
    assert root.get("format") == "3"
    assert root.findtext("name") == "semanom_ros"
    assert root.findtext("export/build_type") == "ament_python"
    setup_py = (ROOT / "setup.py").read_text(encoding="utf-8")
    version = re.search(r'version="([^"]+)"', setup_py)
    assert version and root.findtext("version") == version.group(1)
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}
