#!/usr/bin/env python3
"""Bank build: embedding throughput, streaming pipeline vs bare feature extractor, and peak memory vs bag length.

Peak memory is measured for a 150-frame bag and for a 10x longer one.

Throughput (real DINOv2-S/14, ``--height``, the first ``--frames`` JPEG messages of the highway mcap
bag): *bare* = ``FeatureExtractor.extract_batch`` in batches of 8 on frames decoded beforehand;
*pipeline* = ``semanom_ros.workflows.build_bank.build_bank`` on the bag (reading, JPEG decoding in the reader
thread, embedding, near-duplicate check, adding to the bank), same loaded model, no calibration.
Rounds alternate (bare, pipeline, bare, ...) and the best of each is reported, since the cores are
shared with other work. Target: pipeline >= 0.9 x bare.

Memory (separate subprocesses, peak RSS = the kernel's VmHWM, reset after the model is loaded): a build
from the real 150-frame bag and from a 1500-frame bag this script writes (the same 150 JPEGs ten times,
new time stamps), at ``--memory-height``; "stream + save" is ``semanom-bank build --no-calibrate``,
"calibrate" the following ``semanom-bank calibrate`` (its flat index holds a float32 copy of the
vectors). Growth = peak RSS minus the RSS after loading the model and one warm-up batch (the peak mark
is reset there through /proc/self/clear_refs, so the transient peak of loading the weights does not
hide the build). Target: the growth from 150 to 1500 frames is less than the embeddings added
(float32, as the model returns them).

    python bench/bench_bank_build.py --frames 64 --height 224 --memory-height 112
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine, markdown_table, model_dir, pin_threads, save_json, shared_dir

BAG = shared_dir() / "data" / "highway" / "bag_mcap"
TOPIC = "/camera/image_raw/compressed"


# ------------------------------------------------------------------------------------------ throughput
def throughput(frames: int, height: int, rounds: int, batch: int) -> dict:
    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.core.features import FeatureExtractor
    from semanom_ros.io.bags import iter_bag_frames
    from semanom_ros.workflows.build_bank import build_bank
    from semanom_ros.workflows.settings import BuildOptions

    extractor = FeatureExtractor(str(model_dir()), height, "cpu", "float32")
    decoded = [f.rgb for f in iter_bag_frames(BAG, TOPIC, max_frames=frames)]
    extractor.extract_batch(decoded[:batch])  # warm-up (allocations, oneDNN kernels)
    config = PipelineConfig(model=str(model_dir()), input_height=height, device="cpu", batch_size=batch)
    bare, pipeline, end_to_end = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            t0 = time.perf_counter()
            for i in range(0, len(decoded), batch):
                extractor.extract_batch(decoded[i : i + batch])
            bare.append(len(decoded) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            summary = build_bank(
                [str(BAG)], Path(tmp) / f"bank{r}", config,
                BuildOptions(topic=TOPIC, max_frames=frames, calibrate=False, progress=False), extractor=extractor,
            )
            total = time.perf_counter() - t0
            assert summary.frames_used == frames, summary.format_text()
            pipeline.append(summary.frames_per_s)
            end_to_end.append(frames / total)
            print(f"  round {r + 1}: bare {bare[-1]:.2f} frames/s, pipeline {pipeline[-1]:.2f} frames/s "
                  f"(with bag opening and save {end_to_end[-1]:.2f})", flush=True)
    return {
        "frames": frames,
        "input_height": height,
        "batch_size": batch,
        "bare_fps": max(bare),
        "pipeline_fps": max(pipeline),
        "pipeline_incl_open_save_fps": max(end_to_end),
        "ratio": max(pipeline) / max(bare),
        "rounds": {"bare": bare, "pipeline": pipeline, "end_to_end": end_to_end},
    }


# ------------------------------------------------------------------------------------------ memory
def write_long_bag(path: Path, repeat: int) -> Path:
    """The real bag's 150 JPEG messages ``repeat`` times at 25 fps with fresh stamps."""
    from rosbags.highlevel import AnyReader

    from semanom_ros.io.bagwrite import make_compressed_msg, write_image_bag
    from semanom_ros.io.bags import ros2_typestore

    payloads = []
    with AnyReader([BAG], default_typestore=ros2_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == TOPIC]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            payloads.append((bytes(msg.data), msg.format))
    t0 = 1_700_000_000_000_000_000
    msgs = (
        make_compressed_msg(data, fmt, stamp_ns=t0 + i * 40_000_000)
        for i, (data, fmt) in enumerate(payloads[j % len(payloads)] for j in range(len(payloads) * repeat))
    )
    return write_image_bag(path, msgs, TOPIC, compressed=True, fps=25.0)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the model load's transient peak is forgotten."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


def memory_child(bag: str, out: str, height: int, calibrate: bool) -> None:
    """Runs in a fresh interpreter: prints one JSON line with the peak RSS after each phase."""
    import numpy as np

    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.core.features import FeatureExtractor
    from semanom_ros.workflows.bank_ops import recalibrate
    from semanom_ros.workflows.build_bank import build_bank
    from semanom_ros.workflows.settings import BuildOptions

    extractor = FeatureExtractor(str(model_dir()), height, "cpu", "float32")
    extractor.extract_batch([np.zeros((540, 960, 3), np.uint8)] * 8)  # warm-up at the real batch shape
    reset = _reset_peak()
    baseline = _status_kb("VmRSS") if reset else _peak_kb()
    config = PipelineConfig(model=str(model_dir()), input_height=height, device="cpu", batch_size=8)
    t0 = time.perf_counter()
    summary = build_bank([bag], out, config, BuildOptions(calibrate=False, progress=False), extractor=extractor)
    built = _peak_kb()
    seconds = time.perf_counter() - t0
    result = {
        "frames": summary.frames_used,
        "vectors": summary.vectors_total,
        "dim": extractor.dim,
        "baseline_kb": baseline,
        "peak_reset": reset,
        "stream_save_peak_kb": built,
        "stream_save_s": seconds,
        "fps": summary.frames_per_s,
    }
    if calibrate:
        t0 = time.perf_counter()
        recalibrate(out, progress=False)
        result["calibrate_peak_kb"] = _peak_kb()
        result["calibrate_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(result), flush=True)


def memory(height: int, repeat: int, calibrate: bool, threads: int) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        long_bag = write_long_bag(Path(tmp) / "long_bag", repeat)
        print(f"  wrote {repeat * 150}-frame bag ({sum(f.stat().st_size for f in long_bag.iterdir()) / 2**20:.0f} MB) "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        for name, bag in (("150 frames (real bag)", BAG), (f"{150 * repeat} frames (written)", long_bag)):
            cmd = [sys.executable, __file__, "--memory-child", str(bag), "--out", str(Path(tmp) / "bank"),
                   "--memory-height", str(height), "--threads", str(threads)]
            cmd += ["--with-calibration"] if calibrate else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"memory child failed:\n{proc.stdout}\n{proc.stderr}")
            r = json.loads(line[len("RESULT "):])
            r["source"] = name
            r["emb_fp16_mb"] = r["vectors"] * r["dim"] * 2 / 2**20
            r["emb_fp32_mb"] = r["vectors"] * r["dim"] * 4 / 2**20
            r["baseline_mb"] = r["baseline_kb"] / 1024
            r["stream_save_growth_mb"] = (r["stream_save_peak_kb"] - r["baseline_kb"]) / 1024
            if calibrate:
                r["calibrate_growth_mb"] = (r["calibrate_peak_kb"] - r["baseline_kb"]) / 1024
            rows.append(r)
            print(f"  {name}: {r['frames']} frames, growth {r['stream_save_growth_mb']:.0f} MB "
                  f"(fp16 vectors {r['emb_fp16_mb']:.0f} MB) in {r['stream_save_s']:.0f} s", flush=True)
    small, big = rows
    delta = {
        "growth_stream_save_mb": big["stream_save_growth_mb"] - small["stream_save_growth_mb"],
        "emb_fp16_added_mb": big["emb_fp16_mb"] - small["emb_fp16_mb"],
        "emb_fp32_added_mb": big["emb_fp32_mb"] - small["emb_fp32_mb"],
    }
    if calibrate:
        delta["growth_with_calibration_mb"] = big["calibrate_growth_mb"] - small["calibrate_growth_mb"]
    return {"input_height": height, "rows": rows, "delta": delta}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64, help="frames for the throughput comparison")
    ap.add_argument("--height", type=int, default=224, help="input height for the throughput comparison")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--memory-height", type=int, default=112, help="input height for the memory runs")
    ap.add_argument("--repeat", type=int, default=10, help="the long bag is the real one this many times")
    ap.add_argument("--with-calibration", action="store_true", help="also measure the calibration phase")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch/faiss/BLAS threads (the machine is shared)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--memory-child", metavar="BAG", help=argparse.SUPPRESS)  # internal: one memory run (--out = bank)
    args = ap.parse_args()
    pin_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, str(args.out), args.memory_height, args.with_calibration)
        return
    if not BAG.is_dir():
        raise SystemExit(f"highway bag not found at {BAG}; set SEMANOM_SHARED")
    report: dict = {"machine": machine(), "threads": args.threads}
    if not args.skip_throughput:
        print(f"== throughput: {args.frames} frames at input height {args.height}, batch {args.batch_size} ==",
              flush=True)
        t = throughput(args.frames, args.height, args.rounds, args.batch_size)
        report["throughput"] = t
        print(markdown_table(
            [{"what": "bare FeatureExtractor.extract_batch (frames decoded beforehand)", "fps": t["bare_fps"]},
             {"what": "build pipeline (read + decode + embed + add)", "fps": t["pipeline_fps"],
              "ratio": t["ratio"]},
             {"what": "build pipeline incl. opening the bag and the atomic save",
              "fps": t["pipeline_incl_open_save_fps"],
              "ratio": t["pipeline_incl_open_save_fps"] / t["bare_fps"]}],
            [("what", "what"), ("fps", "frames/s"), ("ratio", "x bare")],
        ))
    if not args.skip_memory:
        print(f"== peak memory: 150 vs {150 * args.repeat} frames at input height {args.memory_height} ==", flush=True)
        m = memory(args.memory_height, args.repeat, args.with_calibration, args.threads)
        report["memory"] = m
        cols = [("source", "bag"), ("frames", "frames"), ("vectors", "vectors"), ("emb_fp16_mb", "bank fp16 MB"),
                ("emb_fp32_mb", "embeddings fp32 MB"), ("baseline_mb", "RSS after model load MB"),
                ("stream_save_growth_mb", "peak growth: stream + save MB"), ("fps", "frames/s")]
        if args.with_calibration:
            cols.append(("calibrate_growth_mb", "peak growth incl. calibrate MB"))
        print(markdown_table(m["rows"], cols))
        d = m["delta"]
        print(
            f"\n150 -> {150 * args.repeat} frames: peak grew {d['growth_stream_save_mb']:.0f} MB (stream + save) "
            f"while the embeddings added are {d['emb_fp32_added_mb']:.0f} MB float32 / "
            f"{d['emb_fp16_added_mb']:.0f} MB as the bank's float16 -> "
            f"{'meets' if d['growth_stream_save_mb'] < d['emb_fp32_added_mb'] else 'misses'} the target"
            + (f"; with calibration {d['growth_with_calibration_mb']:.0f} MB"
               if "growth_with_calibration_mb" in d else "")
        )
    path = save_json(args.out, "bank_build.json", report)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
