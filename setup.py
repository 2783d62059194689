"""ament_python package: `pip install .` or `colcon build` installs the library, the executables
under lib/semanom_ros (where `ros2 run` looks) and launch/config files under share/semanom_ros."""
from glob import glob

from setuptools import find_packages, setup

package_name = "semanom_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="semanom_ros maintainers",
    maintainer_email="maintainers@semanom-ros.org",
    description="Semantic anomaly detection for ROS 2 cameras with DINOv2 embeddings and a nominal bank.",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "monitor_node = semanom_ros.nodes.monitor_node:main",
            "bank_builder_node = semanom_ros.nodes.bank_builder_node:main",
            "semanom-bank = semanom_ros.tools.bank_cli:main",
            "semanom-eval = semanom_ros.tools.evaluate:main",
            "semanom-replay = semanom_ros.tools.replay:main",
        ],
    },
)
