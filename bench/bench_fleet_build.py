#!/usr/bin/env python3
"""Fleet build on Ray: frames/s vs local workers (1, 2), and the Ray path's overhead vs the single-process build.

Real DINOv2-S/14 at ``--height`` on ``--copies`` copies of the highway mcap bag (each its own folder, the
.mcap linked), every ``--stride``-th JPEG message, no calibration (the same merge + calibration follow
both paths). *single* = ``build_bank`` in this process; *ray N* = ``fleet_build`` with N embedding actors
on a local cluster started once (``ray.init(num_cpus=--cpus)``; the cluster's start is reported apart),
a fresh shard folder each run, so actor start and model load per actor are inside its time. Every
path uses ``--threads`` torch threads per worker. frames/s = frames embedded / wall time of the build;
"model s" = time in the forward passes, summed over the workers (the rest is start, reading, saving).
Target: ray 1 costs <= 15 % more wall time than single. No assertions: it prints figures (and the
1-minute load average, since the cores are shared).

    python bench/bench_fleet_build.py --copies 3 --stride 5 --height 224
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine, markdown_table, model_dir, pin_threads, save_json, shared_dir

BAG = shared_dir() / "data" / "highway" / "bag_mcap"
TOPIC = "/camera/image_raw/compressed"


def copies(root: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        folder = root / f"drive_{i}"
        folder.mkdir(parents=True)
        (folder / "metadata.yaml").write_bytes((BAG / "metadata.yaml").read_bytes())
        (folder / "bag_mcap.mcap").symlink_to(BAG / "bag_mcap.mcap")
        out.append(str(folder))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (and for single)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pin_threads(args.threads)

    import ray

    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.workflows.build_bank import build_bank
    from semanom_ros.workflows.fleet_build import FleetOptions, fleet_build
    from semanom_ros.workflows.settings import BuildOptions

    info = machine()
    config = PipelineConfig(model=str(model_dir()), input_height=args.height, device="cpu", dtype="float32",
                            num_threads=args.threads, batch_size=8)
    options = BuildOptions(topic=TOPIC, stride=args.stride, calibrate=False, progress=False)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as tmp:
        root = Path(tmp)
        sources = copies(root / "bags", args.copies)

        def record(name: str, seconds: float, summary) -> None:
            load, frames, model_s = os.getloadavg()[0], summary.embedded, summary.seconds.get("embed", 0.0)
            figures[name] = {"seconds": seconds, "frames": frames, "frames_per_s": frames / seconds,
                             "model_seconds": model_s, "load_1min": load}
            print(f"{name}: {frames} frames in {seconds:.1f} s = {frames / seconds:.2f} frames/s, "
                  f"model {model_s:.1f} s (load {load:.2f})", flush=True)

        t0 = time.perf_counter()
        single = build_bank(sources, root / "single", config, options)
        record("single", time.perf_counter() - t0, single)

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        figures["ray_start_s"] = time.perf_counter() - t0
        try:
            for n in args.workers:
                t0 = time.perf_counter()
                fleet = fleet_build(sources, root / f"ray{n}", config, options,
                                    FleetOptions(workers=n, cpus_per_worker=1, shard_dir=str(root / f"shards{n}")))
                record(f"ray {n}", time.perf_counter() - t0, fleet)
        finally:
            ray.shutdown()

    base = figures["single"]["seconds"]
    for name in ["single"] + [f"ray {n}" for n in args.workers]:
        f = figures[name]
        rows.append({"path": name, "frames": f["frames"], "wall": f"{f['seconds']:.1f}",
                     "fps": f"{f['frames_per_s']:.2f}", "vs": f"{100 * (f['seconds'] / base - 1):+.1f} %",
                     "model": f"{f['model_seconds']:.1f}",
                     "load": f"{f['load_1min']:.2f}"})
    print(f"\n{info['cpu']}, {info['cores']} cores, load {info['load_1min_at_start']:.2f} at start; DINOv2-S at "
          f"{args.height}, {args.copies} bags x every {args.stride}th message, {args.threads} thread(s) per worker; "
          f"local Ray cluster start {figures['ray_start_s']:.1f} s (not in the times below)\n")
    print(markdown_table(rows, [("path", "path"), ("frames", "frames"), ("wall", "wall s"), ("fps", "frames/s"),
                                ("vs", "wall vs single"), ("model", "model s (all workers)"), ("load", "load 1 min")]))
    if args.json:
        out = Path(args.json)
        save_json(out.parent, out.name, {"machine": info, "args": vars(args), "figures": figures})


if __name__ == "__main__":
    main()
