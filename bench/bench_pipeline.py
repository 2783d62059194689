#!/usr/bin/env python3
"""Per-stage latency of the patch pipeline with the real DINOv2-S weights, and frames per second.

Stages, each timed on its own (median over the frames): decode (CompressedImage JPEG from the
highway mcap bag through ``semanom_ros.io.decode_image``), preprocess (resize + normalise),
DINOv2 forward, search (k=1 against a bank of the 150 nominal frames at the same input height;
the bank picks its index type by size, as in production), maps (upsample + threshold +
components), publish (score map 32FC1, overlay bgr8, labels mono16 messages). End to end is
measured separately as a loop of decode + ``Monitor.process`` + message construction.

    python bench/bench_pipeline.py --heights 224,448 --frames 20
"""
from __future__ import annotations

import argparse
import statistics
import time
import types
from pathlib import Path

import numpy as np

from _common import machine, markdown_table, model_dir, pin_threads, read_rgb, save_json, shared_dir

STAGES = ("decode", "preprocess", "forward", "search", "maps", "publish")


def compressed_messages(limit: int) -> tuple[list, str]:
    """The CompressedImage messages of the highway bag (rosbags objects), or the JPEG files as a fallback."""
    data = shared_dir() / "data" / "highway"
    try:
        from rosbags.highlevel import AnyReader

        msgs = []
        with AnyReader([data / "bag_mcap"]) as reader:
            conns = [c for c in reader.connections if c.msgtype.endswith("CompressedImage")]
            for conn, _, raw in reader.messages(connections=conns):
                msgs.append(reader.deserialize(raw, conn.msgtype))
                if len(msgs) >= limit:
                    break
        if msgs:
            return msgs, f"{data / 'bag_mcap'} ({conns[0].topic})"
    except Exception as exc:  # the bag reader is optional here: fall back to the same JPEGs on disk
        print(f"note: reading the bag failed ({exc}); decoding the nominal JPEG files instead")
    files = sorted((data / "test" / "images").glob("*.jpg"))[:limit]
    return [types.SimpleNamespace(format="jpeg", data=np.frombuffer(p.read_bytes(), np.uint8)) for p in files], "files"


def nominal_bank(extractor, cache: Path):
    """Bank of the 150 nominal frames at the extractor's input height (embeddings cached on disk)."""
    from semanom_ros.core.bank import NominalBank

    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"nominal_{extractor.input_height}.npy"
    nominal = sorted((shared_dir() / "data" / "highway" / "nominal").glob("*.jpg"))
    if file.is_file():
        vectors = np.load(file)
    else:
        t0 = time.perf_counter()
        parts = []
        for i in range(0, len(nominal), 8):
            batch = extractor.extract_batch([read_rgb(p) for p in nominal[i : i + 8]])
            parts += [f.patches.reshape(-1, extractor.dim) for f in batch]
        vectors = np.concatenate(parts).astype(np.float16)
        np.save(file, vectors)
        print(f"  embedded {len(nominal)} nominal frames at height {extractor.input_height} "
              f"in {time.perf_counter() - t0:.0f} s")
    per_frame = len(vectors) // len(nominal)
    return NominalBank.from_vectors(vectors, extractor.signature(),
                                    frame_of_vector=np.arange(len(vectors)) // per_frame)


def publish_messages(monitor, rgb, result) -> object:
    """The messages the monitor node publishes per frame: overlay rendering + message construction.

    Uses the node's own ``semanom_ros.io.messages.build_output_messages`` where it imports (rclpy
    messages), else the core image encoders for the three image topics.
    """
    overlay = monitor.overlay(rgb, result)
    try:
        from std_msgs.msg import Header

        from semanom_ros.io.messages import build_output_messages
    except ImportError:
        from semanom_ros.io.images import encode_image

        return [encode_image(result.score_map, "32FC1"), encode_image(overlay, "bgr8"),
                encode_image(result.labels, "mono16")]
    return build_output_messages(result, rgb, Header(frame_id="camera"), overlay_bgr=overlay)


def run_height(height: int, msgs: list, args, out_rows: list) -> None:
    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.core.features import FeatureExtractor, Features
    from semanom_ros.core.maps import threshold_components, upsample_scores
    from semanom_ros.core.monitor import Monitor
    from semanom_ros.core.scoring import patch_score_grid
    from semanom_ros.io.images import decode_image

    extractor = FeatureExtractor(str(model_dir()), height, "cpu", "float32")
    bank = nominal_bank(extractor, args.out / "cache")
    config = PipelineConfig(model=str(model_dir()), input_height=height, device="cpu", threshold=0.35,
                            num_threads=args.threads)
    t0 = time.perf_counter()
    monitor = Monitor(config, bank, extractor)  # builds the bank's index now
    index_s = time.perf_counter() - t0
    info = bank.index_info or {}
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    grid_shape = None
    for i, msg in enumerate(msgs):
        stamps = [time.perf_counter()]
        rgb = decode_image(msg)
        stamps.append(time.perf_counter())
        batch = extractor.preprocess(rgb)[None]
        stamps.append(time.perf_counter())
        patches, _ = extractor.forward(batch)
        stamps.append(time.perf_counter())
        grid_shape = patches.shape[1]
        h, w = batch.shape[2] // extractor.patch_size, batch.shape[3] // extractor.patch_size
        grid = patch_score_grid(bank, patches[0].reshape(h, w, -1), k=1)
        stamps.append(time.perf_counter())
        score_map = upsample_scores(grid, rgb.shape[:2])
        threshold_components(score_map, monitor.threshold, config.min_component_area_px)
        stamps.append(time.perf_counter())
        feats = Features(patches=patches[0].reshape(h, w, -1), cls=None, image_size=rgb.shape[:2],
                         input_size=batch.shape[2:])
        result = monitor.score_features(feats, rgb)  # a result to publish (this search is not timed)
        t_pub = time.perf_counter()
        publish_messages(monitor, rgb, result)
        stamps.append(stamps[-1] + time.perf_counter() - t_pub)
        if i >= args.warmup:
            for s, a, b in zip(STAGES, stamps[:-1], stamps[1:]):
                times[s].append((b - a) * 1e3)
    # End to end, as the node runs it: decode -> Monitor.process -> messages.
    loop = []
    for i, msg in enumerate(msgs):
        t0 = time.perf_counter()
        rgb = decode_image(msg)
        result = monitor.process(rgb)
        publish_messages(monitor, rgb, result)
        if i >= args.warmup:
            loop.append((time.perf_counter() - t0) * 1e3)
    med = {s: statistics.median(v) for s, v in times.items()}
    e2e = statistics.median(loop)
    row = {"height": height, "patches": grid_shape, "bank_vectors": len(bank), "index": info.get("type"),
           "index_build_s": round(index_s, 1), **{f"{s}_ms": med[s] for s in STAGES},
           "sum_ms": sum(med.values()), "e2e_ms": e2e, "fps": 1000.0 / e2e}
    out_rows.append(row)
    print("  " + ", ".join(f"{s} {med[s]:.1f} ms" for s in STAGES) + f"; end to end {e2e:.0f} ms = {1000 / e2e:.2f} fps"
          f" (bank {len(bank)} vectors, {info.get('type')} index, recall@1 {info.get('recall_at_1')})", flush=True)
    monitor.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heights", default="224,448")
    ap.add_argument("--frames", type=int, default=12, help="frames timed per height (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="threads for torch, faiss and BLAS (0 = all cores)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    msgs, origin = compressed_messages(args.frames + args.warmup)
    print(f"threads={threads}; {len(msgs)} CompressedImage messages from {origin}", flush=True)
    rows: list = []
    for height in (int(h) for h in args.heights.split(",")):
        print(f"input height {height}:", flush=True)
        run_height(height, msgs, args, rows)
    table = markdown_table(
        rows,
        [("height", "input height"), ("patches", "patches"), ("bank_vectors", "bank"), ("index", "index"),
         *((f"{s}_ms", f"{s} ms") for s in STAGES), ("e2e_ms", "end to end ms"), ("fps", "fps")],
    )
    print()
    print(f"Per-stage medians over {args.frames} frames (960x540 JPEG), CPU, {threads} threads, fp32")
    print(table)
    path = save_json(args.out, "pipeline.json",
                     {"machine": machine(), "threads": threads, "rows": rows, "table_md": table})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
