"""semanom-replay: run the monitor over every frame of a bag, offline, and write a bag of its outputs.

    semanom-replay drive/ --bank banks/highway -o replay/drive_monitor.mcap [--topic /camera/image_raw]

The output is a rosbag2 directory (MCAP storage; ``--storage sqlite3`` for the plugin every ROS 2
distro ships, e.g. Humble without ros-humble-rosbag2-storage-mcap) holding the input image
messages copied through byte for byte and the monitor's topics under ``--namespace`` (default
``/semanom_monitor``): ``is_anomalous`` (std_msgs/Bool), ``score`` (std_msgs/Float32),
``score_map`` (sensor_msgs/Image 32FC1), ``heatmap`` (sensor_msgs/Image bgr8, 0 .. 2 x
threshold), ``overlay`` (sensor_msgs/Image bgr8), ``overlay/compressed`` (JPEG CompressedImage),
``instances/labels`` (sensor_msgs/Image mono16) and ``instances`` (vision_msgs/Detection2DArray,
written with its definitions whether or not vision_msgs is installed). The messages are built
by the node's own ``semanom_ros.io.messages.build_output_messages`` and carry the input header;
they are written at the input message's bag timestamp. Every frame is processed (nothing is dropped,
nothing depends on timing), so two replays of one bag are identical apart from wall-clock
metadata. ``-o NAME.mcap`` writes the directory ``NAME/`` with ``NAME/NAME.mcap`` inside (the file
Foxglove opens; ``NAME/NAME.db3`` with sqlite3) and ``metadata.yaml`` (what ``ros2 bag play`` reads).

Live alternative: ``ros2 bag play BAG`` in one terminal and
``ros2 launch semanom_ros monitor.launch.py image_topic:=/camera/image_raw bank_path:=BANK`` in another.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from semanom_ros.core.errors import SemanomError
from semanom_ros.workflows.replay import DEFAULT_NAMESPACE, STORAGES, ReplayError, replay_bag
from semanom_ros.workflows.settings import config_from_bank

from .pipeline_args import add_pipeline_overrides, parse_command_line

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semanom-replay",
        description="Run the monitor over every frame of a bag (offline, deterministic) and write an MCAP bag with "
        "the input images and the monitor's output topics, for RViz or Foxglove.",
    )
    p.add_argument("bag", help="input rosbag2 bag (directory, .mcap or .db3)")
    p.add_argument("--bank", required=True, help="bank directory (its manifest gives the pipeline settings)")
    p.add_argument("-o", "--output", required=True,
                   help="output bag: NAME or NAME.mcap -> directory NAME/ with NAME.mcap (or NAME.db3)")
    p.add_argument("--storage", choices=sorted(STORAGES), default="mcap",
                   help="rosbag2 storage: mcap (default, zstd chunks) or sqlite3 (plays on every distro, e.g. "
                   "Humble without the MCAP plugin; uncompressed)")
    p.add_argument("--topic", help="image topic (default: the one with most messages)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help=f"prefix of the output topics (default {DEFAULT_NAMESPACE})")
    p.add_argument("--all-topics", action="store_true",
                   help="copy every topic of the input bag, not just the image topic")
    p.add_argument("--no-overlay", action="store_true", help="do not render the overlay image")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--no-compression", action="store_true", help="write uncompressed MCAP chunks (default: zstd)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pipeline_overrides(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, sink, overrides = parse_command_line(build_parser(), argv)
    try:
        cfg = config_from_bank(args.bank, overrides)
        summary = replay_bag(
            args.bag, args.bank, args.output, cfg, topic=args.topic, namespace=args.namespace,
            all_topics=args.all_topics, overlay=not args.no_overlay, max_frames=args.max_frames,
            overwrite=args.overwrite, compress=not args.no_compression, storage=args.storage,
            progress=not args.no_progress, sink=sink,
        )
    except (SemanomError, ReplayError) as exc:
        print(f"semanom-replay: error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{name} {n}" for name, n in sorted(summary.counts.items()))
    print(
        f"{summary.frames} frames of {summary.topic} processed ({summary.anomalous} anomalous); wrote "
        f"{summary.input_messages} input messages and {counts} to {summary.storage_file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
