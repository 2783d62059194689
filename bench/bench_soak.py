"""Soak test of monitor_node: many frames at 30 Hz over localhost DDS, one malformed message in every 20.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_soak.py [--frames 10000] [--rate 30] [--every 20]
        [--tiny] [--best-effort] [--queue-depth 10] [--publisher-depth 10] [--json out.json]

The node runs in a child process (``python -m semanom_ros.nodes.monitor_node``, autostart), as in
deployment; this script publishes the highway test frames (sensor_msgs/Image rgb8 960x540) stamped
with the send time and, every ``--every``-th message, a malformed one instead, cycling through:
truncated data, a step shorter than a row, an unknown encoding, a 4000x20 frame (refused for its
aspect ratio), a 12000x12000 header with 1 kB of data (refused from the header, max_input_pixels)
and a 5x5 frame (smaller than a patch). Printed: messages sent (good / malformed), the node's counts
from /diagnostics (received, processed, dropped by the newest-frame policy, bad messages) and the
accounting check received = processed + dropped + bad, outputs received here, latency p50 / p95,
the node's resident memory (VmRSS) after the first 5 % of the run and at the end, every 10 s in
between. Targets: memory growth <= 50 MB; every message sent received by the node (received =
sent; printed: lost_before_the_node, and the node's own count of them from the publisher's sequence
numbers, frames_missed); every message the node received answered, dropped by the newest-frame
policy or counted bad (received = processed + dropped + bad: none lost inside the node); as many
scores here as the node processed.

The publisher is reliable with depth 10 (image_transport's default QoS) unless --publisher-depth
says otherwise; the node's input reader history is its input_queue_depth parameter (--queue-depth;
default: the node's default).

``--tiny`` scores with a tiny random-init DINOv2 (fast, no weights needed); by default the real
DINOv2-S/14 in $SEMANOM_SHARED and the bank bench_monitor_node.py caches. Reliable QoS by default, so
the counts add up exactly (best effort may lose 1.5 MB samples on a loaded machine).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _node_run import start_probe, stop_node, wait_for_node  # noqa: E402
from bench_monitor_node import ensure_bank, read_rgb, rss_mb, shared_dir  # noqa: E402

CACHE = REPO / "bench" / "results" / "cache"


def tiny_bank(frames: list[np.ndarray]) -> Path:
    """A tiny random-init DINOv2 (test/tiny_models.py) and a bank of a few test frames, cached."""
    path = CACHE / "soak_tiny_bank"
    if (path / "manifest.json").is_file():
        return path
    sys.path.insert(0, str(REPO / "test"))
    from tiny_models import save_tiny_dinov2

    from semanom_ros.core import PatchBankBuilder, PipelineConfig

    model = save_tiny_dinov2(CACHE / "soak_tiny_dinov2")
    builder = PatchBankBuilder(PipelineConfig(model=str(model), input_height=224, calibration_window=0))
    builder.add_all(SimpleNamespace(rgb=rgb, source="soak", index=i, stamp_ns=i) for i, rgb in enumerate(frames[:6]))
    builder.calibrate()
    return builder.bank.save(path)


def malformed_messages() -> list[tuple[str, object]]:
    """The malformed Image messages the soak cycles through (name, message)."""
    from sensor_msgs.msg import Image

    def raw(encoding: str, height: int, width: int, step: int, nbytes: int) -> Image:
        msg = Image(encoding=encoding, height=height, width=width, step=step)
        msg.data = bytes(nbytes)
        return msg

    return [
        ("truncated", raw("rgb8", 540, 960, 2880, 1000)),
        ("short step", raw("rgb8", 540, 960, 960, 540 * 960)),
        ("unknown encoding", raw("hsv42", 540, 960, 2880, 540 * 2880)),
        ("4000x20 aspect", raw("rgb8", 20, 4000, 12000, 20 * 12000)),
        ("12000x12000 header", raw("rgb8", 12000, 12000, 36000, 1000)),
        ("5x5 smaller than a patch", raw("rgb8", 5, 5, 15, 75)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="messages to send (good + malformed)")
    parser.add_argument("--rate", type=float, default=30.0, help="messages per second")
    parser.add_argument("--every", type=int, default=20, help="one malformed message in every N")
    parser.add_argument("--threads", type=int, default=1, help="torch/faiss threads of the node")
    parser.add_argument("--tiny", action="store_true", help="tiny random-init DINOv2 instead of the real one")
    parser.add_argument("--best-effort", action="store_true", help="best-effort QoS (default reliable)")
    parser.add_argument("--queue-depth", type=int, default=0,
                        help="the node's input_queue_depth (0: the node's default)")
    parser.add_argument("--publisher-depth", type=int, default=10, help="history depth of this side's publisher")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    frames = [read_rgb(f) for f in sorted((shared_dir() / "data" / "highway" / "test" / "images").glob("*.jpg"))]
    if not frames:
        sys.exit(f"no highway test frames under {shared_dir()}; set SEMANOM_SHARED to the shared folder")
    if args.tiny:
        bank = tiny_bank(frames)
    else:
        model = shared_dir() / "models" / "dinov2-small"
        if not (model / "model.safetensors").is_file():
            sys.exit(f"real DINOv2-S weights not found under {model}; pass --tiny or set SEMANOM_SHARED")
        bank = ensure_bank(model, CACHE / "monitor_bank_224", args.threads)

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32

    from semanom_ros.io.images import encode_image

    domain = random.SystemRandom().randint(1, 100)
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reliability = ReliabilityPolicy.BEST_EFFORT if args.best_effort else ReliabilityPolicy.RELIABLE
    topic = "/soak/image_raw"
    node_proc = subprocess.Popen([
        sys.executable, "-m", "semanom_ros.nodes.monitor_node", "--ros-args",
        "-r", "__node:=semanom_monitor", "-r", f"image:={topic}", "-p", f"bank_path:={bank}",
        "-p", "autostart:=true", "-p", f"num_threads:={args.threads}", "-p", "diagnostics_period_s:=0.5",
        "-p", f"reliability:={'best_effort' if args.best_effort else 'reliable'}",
        "--log-level", "semanom_monitor:=error",  # the malformed messages' WARN lines, once per 5 s, are noise here
        *(["-p", f"input_queue_depth:={args.queue_depth}"] if args.queue_depth else []),
    ], env=env, cwd=str(REPO))

    context, bench = start_probe("semanom_soak", domain)
    clock = bench.get_clock()
    lock = threading.Lock()
    ages_ms: list[float] = []
    diag: dict[str, str] = {}
    levels: dict[int, int] = {}
    score_count = [0]

    def on_score(msg: Float32) -> None:
        with lock:
            score_count[0] += 1

    def on_score_map(msg: Image) -> None:
        age = (clock.now().nanoseconds - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)) / 1e6
        with lock:
            ages_ms.append(age)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith("/semanom_monitor"):
                level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                with lock:
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in status.values})
                    levels[level] = levels.get(level, 0) + 1

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    bench.create_subscription(Image, "/semanom_monitor/score_map", on_score_map, reliable)
    scores = bench.create_subscription(Float32, "/semanom_monitor/score", on_score, reliable)
    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    pub = bench.create_publisher(Image, topic, QoSProfile(depth=args.publisher_depth, reliability=reliability))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(bench)
    threading.Thread(target=executor.spin, daemon=True).start()

    good = [encode_image(rgb, "rgb8") for rgb in frames]
    bad = malformed_messages()
    sent_good = sent_bad = 0
    rss_trace: list[float] = []
    rss_start = float("nan")
    try:
        wait_for_node(pub, scores, node_proc)
        time.sleep(1.0)
        period = 1.0 / args.rate
        t_start = next_t = time.monotonic()
        last_trace = t_start
        warm = max(1, args.frames // 20)  # RSS reference after the first 5 %: allocations of the first frames done
        for i in range(args.frames):
            if i % args.every == args.every - 1:
                msg = bad[sent_bad % len(bad)][1]
                sent_bad += 1
            else:
                msg = good[sent_good % len(good)]
                sent_good += 1
            msg.header.stamp = clock.now().to_msg()
            pub.publish(msg)
            if i + 1 == warm:
                rss_start = rss_mb(node_proc.pid)
            if time.monotonic() - last_trace >= 10.0:
                rss_trace.append(round(rss_mb(node_proc.pid), 1))
                last_trace = time.monotonic()
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        elapsed = time.monotonic() - t_start
        time.sleep(3.0)  # the frame in hand finishes, two more diagnostics periods
        rss_end = rss_mb(node_proc.pid)
    finally:
        stop_node(node_proc, executor, bench, context)  # SIGINT: the node's clean Ctrl-C path

    with lock:
        ages = np.array(ages_ms)
        d = dict(diag)
    count = {k: int(d.get(k, -1)) for k in ("frames_received", "frames_processed", "frames_dropped", "bad_messages",
                                            "frames_missed")}
    accounted = count["frames_processed"] + count["frames_dropped"] + count["bad_messages"]
    figures = {
        "model": "tiny random-init DINOv2" if args.tiny else "DINOv2-S/14",
        "qos": "best effort" if args.best_effort else "reliable",
        "input_queue_depth": args.queue_depth or "node default",
        "publisher_depth": args.publisher_depth,
        "seconds": round(elapsed, 1),
        "rate_hz_sent": round(args.frames / elapsed, 2),
        "sent_good": sent_good,
        "sent_malformed": sent_bad,
        "node_received": count["frames_received"],
        "node_processed": count["frames_processed"],
        "node_dropped_newest_only": count["frames_dropped"],
        "node_bad_messages": count["bad_messages"],
        "node_errors": d.get("errors"),
        "received_eq_processed_dropped_bad": count["frames_received"] == accounted,
        "lost_before_the_node": sent_good + sent_bad - count["frames_received"],
        "node_missed": count["frames_missed"],  # the node's count of the above, from sequence numbers
        "scores_received_here": score_count[0],
        "score_maps_received_here": len(ages),
        "latency_p50_ms": round(float(np.percentile(ages, 50)), 1) if len(ages) else None,
        "latency_p95_ms": round(float(np.percentile(ages, 95)), 1) if len(ages) else None,
        "node_stages_p50_ms": d.get("stages_p50_ms"),
        "rss_after_5pct_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_every_10s_mb": rss_trace,
        "diagnostics_levels_seen": {["OK", "WARN", "ERROR", "STALE"][k]: v for k, v in sorted(levels.items())},
        "load_average": os.getloadavg()[0],
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    checks = {
        "memory growth <= 50 MB": figures["rss_growth_mb"] <= 50,
        "received = sent": figures["lost_before_the_node"] == 0,
        "sent = received + missed (every message counted on /diagnostics)":
            sent_good + sent_bad == count["frames_received"] + count["frames_missed"],
        # The first messages may go before the node's subscription matched: not sequence gaps, not counted.
        "missed (node) <= lost before the node": count["frames_missed"] <= figures["lost_before_the_node"],
        # A malformed message waiting in the mailbox is replaced by the next frame like any other
        # (counted as dropped), so only the ones the worker took are bad messages.
        "malformed messages taken = bad messages": count["bad_messages"] <= sent_bad,
        "received = processed + dropped + bad": figures["received_eq_processed_dropped_bad"],
        "scores here = processed": score_count[0] == count["frames_processed"],
    }
    print("; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**figures, "checks": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
