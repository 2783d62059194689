"""Cost of the anomaly clip recorder per frame: the worker's add() and the writer thread's disk time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_clip_recorder.py [--seconds 20] [--rate 30] [--raw-input]

Feeds the recorder what monitor_node gives it at ``--rate`` Hz: the input frame (960x540 JPEG
CompressedImage, or rgb8 Image with --raw-input), the JPEG overlay, score, flag and a
Detection2DArray-sized message, with an alarm onset every 4 s (pre 2 s, post 2 s). Printed: add()
time per frame (what the node's worker pays), the writer thread's time per frame while a clip is
open (serialisation + MCAP write, on its own thread), process CPU per frame with and without the
recorder, clips and bytes written, and whether every clip reads back with rosbags.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def frame_messages(raw_input: bool):
    import cv2
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Bool, Float32

    from semanom_ros.io.images import encode_compressed, encode_image

    rng = np.random.default_rng(0)
    rgb = cv2.resize(rng.integers(0, 255, (27, 48, 3), dtype=np.uint8), (960, 540), interpolation=cv2.INTER_CUBIC)
    camera = encode_image(rgb, "rgb8") if raw_input else encode_compressed(rgb, "jpeg")
    overlay = encode_compressed(rgb[..., ::-1].copy(), "jpeg", quality=80)
    assert isinstance(camera, (Image, CompressedImage))
    return camera, overlay, Float32(data=0.2), Bool(data=True)


def run(seconds: float, rate: float, raw_input: bool, record: bool, folder: Path) -> dict:
    from semanom_ros.workflows.clip_recorder import ClipRecord, ClipRecorder, message_nbytes
    from semanom_ros.io.serialization import ros_msgtype

    camera, overlay, score, flag = frame_messages(raw_input)
    rec = ClipRecorder(folder, pre_s=2.0, post_s=2.0, quota_bytes=4 << 30) if record else None
    frames = int(seconds * rate)
    period_ns = int(1e9 / rate)
    base = 1_700_000_000 * 10**9
    cpu0 = time.process_time()
    t0 = time.monotonic()
    add_us = []
    for i in range(frames):
        stamp = base + i * period_ns
        records = [ClipRecord(t, ros_msgtype(m), stamp, m, message_nbytes(m)) for t, m in
                   (("/camera/image", camera), ("/mon/overlay/compressed", overlay), ("/mon/score", score),
                    ("/mon/is_anomalous", flag))]
        if rec is not None:
            a0 = time.perf_counter()
            rec.add(records)
            if i % int(4 * rate) == int(2 * rate):
                rec.trigger(stamp)
            add_us.append((time.perf_counter() - a0) * 1e6)
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    if rec is not None:
        rec.close(120)  # finishes the last clip
    cpu = time.process_time() - cpu0
    out = {"frames": frames, "cpu_ms_per_frame": 1e3 * cpu / frames}
    if rec is not None:
        writes = list(rec.stats.write_s)
        out.update({
            "add_us_p50": float(np.percentile(add_us, 50)), "add_us_p99": float(np.percentile(add_us, 99)),
            "write_ms_per_message_p50": 1e3 * float(np.median(writes)),
            "clips": rec.stats.clips_written, "bytes_written_mb": rec.stats.bytes_written / 1e6,
            "records_dropped": rec.stats.records_dropped, "errors": rec.stats.errors,
        })
        from rosbags.highlevel import AnyReader

        readable = 0
        for clip in sorted(folder.iterdir()):
            with AnyReader([clip]) as reader:
                readable += int(sum(1 for _ in reader.messages()) > 0)
        out["clips_readable"] = readable
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--raw-input", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = run(args.seconds, args.rate, args.raw_input, False, Path(tmp) / "none")
        rec = run(args.seconds, args.rate, args.raw_input, True, Path(tmp) / "clips")
    figures = {"input": "rgb8 960x540" if args.raw_input else "JPEG 960x540", "rate_hz": args.rate,
               "without_recorder": base, "with_recorder": rec,
               "extra_cpu_ms_per_frame": rec["cpu_ms_per_frame"] - base["cpu_ms_per_frame"]}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
