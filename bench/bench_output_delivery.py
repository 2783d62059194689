"""Output delivery of monitor_node at 30 Hz, per topic, to a reliable and a best-effort subscriber.

Each subscriber runs in its own process (as RViz and a logger would be).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_output_delivery.py [--seconds 10] [--depth 5]
        [--output-reliability reliable] [--model tiny|real] [--max-output-pixels 0] [--clip-dir DIR]

Processes: this script publishes 960x540 rgb8 frames (the highway test frames) at ``--rate`` Hz,
reliable; the node runs in a child process (``python -m semanom_ros.nodes.monitor_node``); two
counter processes subscribe to every output topic (depth 50), one reliable and one best effort,
and count the distinct input stamps they receive per topic. The denominator is the node's
``frames_processed`` from /diagnostics. ``--model tiny`` (default) uses a random-init 2-layer
DINOv2 so the node processes near the camera rate and the outputs carry the most traffic;
``--model real`` uses DINOv2-S/14 from $SEMANOM_SHARED. ``--clip-dir`` also records anomaly clips
(threshold 0: every frame anomalous, onset after the first frames) to include their cost.
``--no-node-profile`` runs the node on Fast DDS' default transports (the behaviour before
semanom_ros.nodes.dds_profile) for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KEYS = ("score_map", "heatmap", "overlay", "overlay/compressed", "instances/labels", "score", "is_anomalous")
NODE = "semanom_monitor"


def shared_dir() -> Path:
    return Path(os.environ.get("SEMANOM_SHARED", REPO.parent / "shared"))


def read_frames() -> list:
    import cv2

    files = sorted((shared_dir() / "data" / "highway" / "test" / "images").glob("*.jpg"))[:8]
    if not files:
        sys.exit(f"highway test frames not found under {shared_dir()}; set SEMANOM_SHARED")
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


def make_bank(model: str, frames: list, folder: Path) -> Path:
    from semanom_ros.core import PatchBankBuilder, PipelineConfig

    if model == "tiny":
        sys.path.insert(0, str(REPO / "test"))
        from tiny_models import save_tiny_dinov2

        model_path = str(save_tiny_dinov2(folder / "tiny_model"))
    else:
        model_path = str(shared_dir() / "models" / "dinov2-small")
    builder = PatchBankBuilder(PipelineConfig(model=model_path, input_height=224 if model == "real" else 56,
                                              num_threads=1, calibration_window=0))
    builder.add_all(SimpleNamespace(rgb=rgb, source="bench", index=i, stamp_ns=i) for i, rgb in enumerate(frames))
    builder.calibrate()
    return builder.bank.save(folder / "bank")


def counter(reliability: str, out: Path, stop_file: Path, deserialize: bool) -> None:
    """Child process: count distinct stamps per output topic until ``stop_file`` exists (+2 s); write JSON.

    Without ``deserialize`` the subscriptions are raw (serialised bytes, the stamp read from the CDR
    header), so the count measures DDS delivery, not how fast Python deserialises 1.5 MB images.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from semanom_ros.io.messages import output_message_types

    rclpy.init()
    node = Node(f"counter_{reliability}")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    seen: dict[str, set] = {k: set() for k in KEYS}
    counts: dict[str, int] = {k: 0 for k in KEYS}
    diag: dict[str, str] = {}
    types = output_message_types()

    def collect(key):
        stamped = key not in ("score", "is_anomalous")

        def cb(msg):
            counts[key] += 1
            if not stamped:
                return
            if isinstance(msg, bytes):  # CDR: 4-byte encapsulation, then Header.stamp (int32 sec, uint32 nanosec)
                seen[key].add(struct.unpack_from("<iI", msg, 4))
            else:
                seen[key].add((msg.header.stamp.sec, msg.header.stamp.nanosec))
        return cb

    for key in KEYS:
        node.create_subscription(types[key], f"/{NODE}/{key}", collect(key), QoSProfile(depth=50, reliability=policy),
                                 raw=not deserialize)

    def on_diag(msg):
        for s in msg.status:
            if s.name == f"semanom: /{NODE}":
                diag.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    ready = False
    while not stop_file.exists():
        executor.spin_once(timeout_sec=0.1)
        if not ready and all(node.count_publishers(f"/{NODE}/{key}") for key in KEYS):
            ready = True
            stop_file.with_suffix(".ready").touch()  # matched every output: the camera may start
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    out.write_text(json.dumps({"counts": counts, "distinct": {k: len(v) for k, v in seen.items()}, "diag": diag}))
    node.destroy_node()
    rclpy.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--depth", type=int, default=5, help="output_depth of the node")
    parser.add_argument("--output-reliability", default="reliable", choices=("reliable", "best_effort"))
    parser.add_argument("--max-output-pixels", type=int, default=0)
    parser.add_argument("--model", default="tiny", choices=("tiny", "real"))
    parser.add_argument("--clip-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-node-profile", action="store_true",
                        help="run the node with SEMANOM_DDS_PROFILE=off (Fast DDS defaults: 512 KB shared-memory "
                        "segments), as before the node applied its large-image profile")
    parser.add_argument("--deserialize", action="store_true",
                        help="counters deserialise every message in Python (default: raw subscriptions)")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "main":
        counter(args.role, args.out, args.out.with_suffix(".stop"), args.deserialize)
        return 0

    frames = read_frames()
    work = Path(tempfile.mkdtemp(prefix="semanom_delivery_"))
    bank = make_bank(args.model, frames, work)
    domain = random.SystemRandom().randint(1, 100)
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    node_cmd = [sys.executable, "-m", "semanom_ros.nodes.monitor_node", "--ros-args", "-r", f"__node:={NODE}",
                "-r", "image:=/bench/image_raw", "-p", f"bank_path:={bank}", "-p", "autostart:=true",
                "-p", "num_threads:=1", "-p", "reliability:=reliable", "-p", "diagnostics_period_s:=0.5",
                "-p", f"output_depth:={args.depth}", "-p", f"output_reliability:={args.output_reliability}",
                "-p", f"max_output_pixels:={args.max_output_pixels}"]
    if args.clip_dir:
        node_cmd += ["-p", f"clip_dir:={args.clip_dir}", "-p", "threshold:=0.0", "-p", "clip_post_s:=2.0"]
    node_env = dict(env, SEMANOM_DDS_PROFILE="off") if args.no_node_profile else env
    node_proc = subprocess.Popen(node_cmd, env=node_env, cwd=str(REPO))

    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from semanom_ros.io.images import encode_image

    rclpy.init()
    bench = Node("delivery_bench")
    pub = bench.create_publisher(Image, "/bench/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 120
    while not pub.get_subscription_count():
        if node_proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("monitor_node did not come up")
        time.sleep(0.1)
    outs = {kind: work / f"{kind}.json" for kind in ("reliable", "best_effort")}
    counters = [subprocess.Popen([sys.executable, __file__, "--role", kind, "--out", str(path)]
                                 + (["--deserialize"] if args.deserialize else []), env=env)
                for kind, path in outs.items()]
    deadline = time.monotonic() + 60
    while not all(path.with_suffix(".ready").exists() for path in outs.values()):  # counters matched
        if time.monotonic() > deadline:
            sys.exit("the counters did not match the node's outputs within 60 s")
        time.sleep(0.1)
    time.sleep(2.0)  # publisher-side matching completes too
    messages = [encode_image(rgb, "rgb8") for rgb in frames]
    clock = bench.get_clock()
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        msg = messages[sent % len(messages)]
        msg.header.stamp = clock.now().to_msg()
        pub.publish(msg)
        sent += 1
        time.sleep(max(0.0, t0 + sent / args.rate - time.monotonic()))
    time.sleep(3.0)  # the node finishes its frame in hand; a diagnostics period passes
    for path in outs.values():
        path.with_suffix(".stop").touch()
    for proc in counters:
        proc.wait(timeout=120)
    node_proc.send_signal(2)
    node_proc.wait(timeout=30)
    bench.destroy_node()
    rclpy.shutdown()
    results = {kind: json.loads(path.read_text()) for kind, path in outs.items()}
    processed = int(results["reliable"]["diag"].get("frames_processed", "0"))
    profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or (
        "Fast DDS defaults" if args.no_node_profile else "the node's large-image profile (nodes/dds_profile.py)")
    figures = {"frames_sent": sent, "frames_processed": processed, "model": args.model, "depth": args.depth,
               "node_profile": profile,
               "output_reliability": args.output_reliability, "max_output_pixels": args.max_output_pixels,
               "stages_p50_ms": results["reliable"]["diag"].get("stages_p50_ms"), "topics": {}}
    print(f"{sent} frames sent at {args.rate:.0f} Hz, {processed} processed (node /diagnostics); "
          f"output QoS {args.output_reliability}, depth {args.depth}; counters "
          f"{'deserialise' if args.deserialize else 'raw'}; load average {os.getloadavg()[0]:.1f}; node Fast DDS "
          f"profile: {profile}")
    print("| topic | reliable subscriber | best-effort subscriber |\n|---|---|---|")
    for key in KEYS:
        row = {}
        for kind, res in results.items():
            n = res["distinct"][key] if key not in ("score", "is_anomalous") else res["counts"][key]
            row[kind] = n
        figures["topics"][key] = row
        print(f"| {key} | {row['reliable']}/{processed} ({100 * row['reliable'] / max(processed, 1):.1f} %) | "
              f"{row['best_effort']}/{processed} ({100 * row['best_effort'] / max(processed, 1):.1f} %) |")
    print("node stages p50 (ms):", figures["stages_p50_ms"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
