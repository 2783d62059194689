"""End-to-end benchmark of monitor_node: a camera publisher at 30 Hz into the node with the real model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_monitor_node.py [--seconds 20] [--rate 30] [--threads 1]
        [--compressed] [--reliable] [--json out.json]

Two processes, as in deployment: this script publishes the highway test frames (sensor_msgs/Image
rgb8 960x540, or JPEG CompressedImage with --compressed) stamped with the send time, and the node
runs in a child process (``python -m semanom_ros.nodes.monitor_node --ros-args ...``, autostart).
Printed: frames sent, outputs received (processed rate), dropped frames (the node's /diagnostics),
end-to-end latency p50/p95 = age of the output's header stamp when it arrives here, the engine's
bare per-frame time (Monitor.process median on the same frames, same thread count, measured in this
run before the node starts), the ratio p95 / engine, and the node's resident memory (VmRSS) after
activation, every 5 s and at the end. Targets: p95 <= 1.5 x engine time, memory growth <= 50 MB.
The node's own /diagnostics split its latency into stages (wait in the mailbox, decode, engine,
overlay, publish), printed too: ``p95_over_node_engine_p50`` compares with the engine as it ran
inside the node during the run (on a small machine the publisher and the node share the cores).

Raw 960x540 rgb8 frames are 1.5 MB: over best-effort UDP (Fast DDS' default for samples above its
shared-memory segment) a loaded receiver loses many of them whole (one lost fragment loses the
sample), so fewer frames reach the node; ``--reliable`` or ``--compressed`` avoid that.

The bank is built once from every 4th nominal highway frame at input height 224 and cached in
bench/results/cache/monitor_bank_224 (``--bank DIR`` uses another one).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _node_run import start_probe, stop_node, wait_for_node

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_dir() -> Path:
    return Path(os.environ.get("SEMANOM_SHARED", REPO.parent / "shared"))


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def ensure_bank(model: Path, path: Path, threads: int) -> Path:
    from semanom_ros.core import PatchBankBuilder, PipelineConfig

    if (path / "manifest.json").is_file():
        return path
    print(f"building the bank in {path} (every 4th nominal frame, input height 224) ...", flush=True)
    files = sorted((shared_dir() / "data" / "highway" / "nominal").glob("*.jpg"))[::4]
    builder = PatchBankBuilder(PipelineConfig(model=str(model), input_height=224, num_threads=threads))
    builder.add_all(SimpleNamespace(rgb=read_rgb(f), source="highway/nominal", index=4 * i, stamp_ns=0)
                    for i, f in enumerate(files))
    builder.calibrate()
    return builder.bank.save(path)


def engine_ms(bank: Path, frames: list[np.ndarray], threads: int, repeats: int) -> dict[str, float]:
    """Median Monitor.process time (features + search + maps) and overlay time on the benchmark frames."""
    from semanom_ros.core import Monitor
    from semanom_ros.workflows.settings import config_from_bank

    monitor = Monitor(config_from_bank(bank, {"num_threads": threads}), bank)
    monitor.process(frames[0])  # warm-up, as the node does at configure
    process, overlay = [], []
    for i in range(repeats):
        rgb = frames[i % len(frames)]
        t0 = time.perf_counter()
        result = monitor.process(rgb)
        t1 = time.perf_counter()
        monitor.overlay(rgb, result)
        t2 = time.perf_counter()
        process.append((t1 - t0) * 1e3)
        overlay.append((t2 - t1) * 1e3)
    monitor.release()
    return {"process_ms": statistics.median(process), "overlay_ms": statistics.median(overlay)}


def _stage(stages: str | None, name: str) -> float:
    """The value of one stage in the node's 'wait 3.1, decode 2.0, engine ...' diagnostics string."""
    for part in (stages or "").split(","):
        key, _, value = part.strip().partition(" ")
        if key == name:
            return float(value)
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time (>= 20 for the report)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument("--threads", type=int, default=1, help="torch/faiss threads of the engine and the node")
    parser.add_argument("--bank", type=Path, default=REPO / "bench" / "results" / "cache" / "monitor_bank_224")
    parser.add_argument("--compressed", action="store_true", help="publish JPEG CompressedImage instead of rgb8")
    parser.add_argument("--reliable", action="store_true",
                        help="reliable publisher and node subscription (default: best effort, the camera default)")
    parser.add_argument("--engine-repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    model = shared_dir() / "models" / "dinov2-small"
    if not (model / "model.safetensors").is_file():
        sys.exit(f"real DINOv2-S weights not found under {model}; set SEMANOM_SHARED to the shared folder")
    frame_files = sorted((shared_dir() / "data" / "highway" / "test" / "images").glob("*.jpg"))
    frames = [read_rgb(f) for f in frame_files]
    bank = ensure_bank(model, args.bank, args.threads)
    engine = engine_ms(bank, frames, args.threads, args.engine_repeats)
    print(f"engine (Monitor.process median, {args.threads} thread(s)): {engine['process_ms']:.1f} ms, "
          f"overlay {engine['overlay_ms']:.1f} ms", flush=True)

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Float32

    from semanom_ros.io.images import encode_compressed, encode_image

    domain = random.SystemRandom().randint(1, 100)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    topic = "/bench/image_raw" + ("/compressed" if args.compressed else "")
    node_cmd = [
        sys.executable, "-m", "semanom_ros.nodes.monitor_node", "--ros-args",
        "-r", "__node:=semanom_monitor", "-r", f"image:={topic}",
        "-p", f"bank_path:={bank}", "-p", "autostart:=true", "-p", f"num_threads:={args.threads}",
        "-p", "diagnostics_period_s:=0.5", "-p", f"reliability:={'reliable' if args.reliable else 'best_effort'}",
    ]
    node_proc = subprocess.Popen(node_cmd, env=env, cwd=str(REPO))

    context, bench = start_probe("semanom_bench", domain)
    clock = bench.get_clock()
    lock = threading.Lock()
    ages_ms: list[float] = []
    stamps_seen: set[int] = set()
    last_diag: dict[str, str] = {}

    def on_score_map(msg: Image) -> None:
        age = (clock.now().nanoseconds - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)) / 1e6
        with lock:
            ages_ms.append(age)
            stamps_seen.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith("/semanom_monitor"):
                with lock:
                    last_diag.clear()
                    last_diag.update({kv.key: kv.value for kv in status.values})

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    bench.create_subscription(Image, "/semanom_monitor/score_map", on_score_map, reliable)
    scores = bench.create_subscription(Float32, "/semanom_monitor/score", lambda m: None, reliable)
    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    pub = bench.create_publisher(CompressedImage if args.compressed else Image, topic,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE if args.reliable
                                            else ReliabilityPolicy.BEST_EFFORT))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(bench)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    # Encode once: the publisher must not be the bottleneck (only the stamp changes per frame).
    messages = [encode_compressed(rgb, "jpeg") if args.compressed else encode_image(rgb, "rgb8") for rgb in frames]
    for msg in messages:
        msg.header.frame_id = "bench_camera"
    try:
        wait_for_node(pub, scores, node_proc)
        time.sleep(1.0)  # let the node settle after activation
        rss_start = rss_mb(node_proc.pid)
        rss_trace: list[float] = []
        period = 1.0 / args.rate
        sent = 0
        t_start = time.monotonic()
        next_t = t_start
        while time.monotonic() - t_start < args.seconds:
            msg = messages[sent % len(messages)]
            msg.header.stamp = clock.now().to_msg()
            pub.publish(msg)
            sent += 1
            if sent % int(max(1, 5 * args.rate)) == 0:
                rss_trace.append(round(rss_mb(node_proc.pid), 1))  # every 5 s
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        elapsed = time.monotonic() - t_start
        time.sleep(max(2.0, 3 * engine["process_ms"] / 1e3))  # the frame in hand finishes
        rss_end = rss_mb(node_proc.pid)
        time.sleep(1.0)  # one more diagnostics period
    finally:
        stop_node(node_proc, executor, bench, context)  # SIGINT: the node's clean Ctrl-C path

    with lock:
        ages = np.array(ages_ms)
        diag = dict(last_diag)
    processed = len(ages)
    p50, p95 = (float(np.percentile(ages, q)) for q in (50, 95)) if processed else (float("nan"),) * 2
    figures = {
        "input": ("CompressedImage jpeg" if args.compressed else "Image rgb8")
        + (", reliable" if args.reliable else ", best effort"),
        "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "seconds": round(elapsed, 2),
        "rate_hz_sent": round(sent / elapsed, 2),
        "frames_sent": sent,
        "outputs_received": processed,
        "processed_rate_hz": round(processed / elapsed, 2),
        "node_frames_received": diag.get("frames_received"),
        "node_frames_processed": diag.get("frames_processed"),
        "node_frames_dropped": diag.get("frames_dropped"),
        "node_bad_messages": diag.get("bad_messages"),
        "latency_p50_ms": round(p50, 1),
        "latency_p95_ms": round(p95, 1),
        "latency_max_ms": round(float(ages.max()), 1) if processed else None,
        "node_latency_p95_ms": diag.get("latency_p95_ms"),
        "node_processing_p50_ms": diag.get("processing_p50_ms"),
        "node_processing_p95_ms": diag.get("processing_p95_ms"),
        "node_stages_p50_ms": diag.get("stages_p50_ms"),
        "node_stages_p95_ms": diag.get("stages_p95_ms"),
        "engine_ms": round(engine["process_ms"], 1),
        "overlay_ms": round(engine["overlay_ms"], 1),
        "p95_over_engine": round(p95 / engine["process_ms"], 2),
        # The same engine inside the node during the run (the publisher and the node share the cores).
        "p95_over_node_engine_p50": round(p95 / _stage(diag.get("stages_p50_ms"), "engine"), 2),
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_every_5s_mb": rss_trace,
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
    }
    # Latency must not grow: compare the first and last thirds of the run.
    if processed >= 6:
        third = processed // 3
        figures["latency_first_third_p50_ms"] = round(float(np.median(ages[:third])), 1)
        figures["latency_last_third_p50_ms"] = round(float(np.median(ages[-third:])), 1)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    ok_latency = p95 <= 1.5 * engine["process_ms"]
    ok_memory = figures["rss_growth_mb"] <= 50
    print(f"target latency p95 <= 1.5 x engine: {'met' if ok_latency else 'NOT met'}; "
          f"memory growth <= 50 MB: {'met' if ok_memory else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
