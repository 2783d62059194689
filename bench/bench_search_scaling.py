#!/usr/bin/env python3
"""Search scaling: query time, recall@1, memory and build time of each index type vs bank size.

Bank vectors above the ~67k real DINOv2-S patch embeddings of the 150 nominal highway frames are
synthetic re-drives of that sequence (each frame's patches, noisy and partly mixed with a nearby
frame's, renormalised), so neighbourhoods and the frame structure look like real data. The
``auto`` row is the product path: a NominalBank with default settings, its index type chosen by
size and its search depth tuned at build time on held-out frames. Queries are real patches of test frames
that are not in the bank; one frame at input height 224 is 16 x 28 = 448 queries.

Every figure comes from one run on one machine: the NumPy brute-force baseline (chunked
``q @ X.T``, argmax) and the DINOv2-S forward time at the same input size are measured beside
the faiss indexes, with one thread count for all of them.

    python bench/bench_search_scaling.py                 # 1e4, 1e5, 1e6
    python bench/bench_search_scaling.py --sizes 1e4,1e5,1e6,2e6 --types all
"""
from __future__ import annotations

import argparse
import functools
import gc
import time
from pathlib import Path

import numpy as np

from _common import (machine, markdown_table, model_dir, pin_threads, read_rgb, real_embeddings, save_json,
                     shared_dir, timed)

ALL_TYPES = ("numpy", "flat", "flat_fp16", "ivf", "ivfpq", "hnsw", "auto")
# Above these sizes a type is skipped unless --types names it (minutes to build or to query on 2 cores).
QUICK_LIMITS = {"numpy": 2_000_000, "flat": 2_000_000, "flat_fp16": 100_000, "ivf": 2_000_000,
                "ivfpq": 100_000, "hnsw": 100_000, "auto": 2_000_000}


def synthetic_bank(real: np.ndarray, n: int, seed: int, noise: float = 0.005, per_frame: int = 448) -> np.ndarray:
    """(n, D) float16 unit vectors: the real drive first, then synthetic re-drives of it.

    A synthetic frame t repeats real frame t (mod 150) patch by patch, each patch noisy and half
    of them mixed with the same patch of a frame up to 3 steps away, renormalised: a fleet
    passing the same road again. Vectors stay in frame order, so the bank's frame structure
    (what its build-time recall probe holds out) is like a real one.
    """
    rng = np.random.default_rng(seed)
    real32 = np.asarray(real, np.float32)
    frames = len(real32) // per_frame
    out = np.empty((n, real.shape[1]), np.float16)
    take = min(n, len(real32))
    out[:take] = real32[:take]
    block = per_frame * 256
    for start in range(take, n, block):
        m = min(block, n - start)
        pos = np.arange(start, start + m)
        frame, patch = (pos // per_frame) % frames, pos % per_frame
        near = np.clip(frame + rng.integers(-3, 4, m), 0, frames - 1)
        a = real32[frame * per_frame + patch]
        b = real32[near * per_frame + patch]
        w = np.where(rng.random(m) < 0.5, 1.0, rng.uniform(0.6, 1.0, m)).astype(np.float32)[:, None]
        v = w * a + (1.0 - w) * b + noise * rng.standard_normal(a.shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start : start + m] = v
    return out


def product_bank(vectors: np.ndarray, per_frame: int = 448):
    """The synthetic vectors as a NominalBank, indexed exactly as a built bank would be (index_type auto)."""
    from semanom_ros.core.bank import ModelSignature, NominalBank
    from semanom_ros.core.config import PipelineConfig

    sig = ModelSignature(model="bench", fingerprint="synthetic", input_height=224, dim=vectors.shape[1])
    bank = NominalBank.from_vectors(vectors, sig, frame_of_vector=np.arange(len(vectors)) // per_frame)
    bank.config = PipelineConfig(device="cpu").to_dict()
    return bank


def numpy_search(x32: np.ndarray, q: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """The plain baseline: chunked q @ X.T, running max."""
    best_s = np.full(len(q), -np.inf, np.float32)
    best_i = np.zeros(len(q), np.int64)
    rows = np.arange(len(q))
    for s in range(0, len(x32), chunk):
        sims = q @ x32[s : s + chunk].T
        arg = sims.argmax(1)
        val = sims[rows, arg]
        better = val > best_s
        best_s[better], best_i[better] = val[better], arg[better] + s
    return best_s, best_i


def dinov2_forward_ms(input_height: int, repeats: int) -> float:
    import torch

    from semanom_ros.core.features import FeatureExtractor

    extractor = FeatureExtractor(str(model_dir()), input_height, "cpu", "float32")
    rgb = read_rgb(sorted((shared_dir() / "data" / "highway" / "test" / "images").glob("*.jpg"))[0])
    batch = extractor.preprocess(rgb)[None]
    ms, _ = timed(functools.partial(extractor.forward, batch), repeats)
    extractor.release()
    del extractor
    gc.collect()
    torch.set_num_threads(torch.get_num_threads())
    return ms


def sweep(index, kind, n, one_frame, queries, true_s, true_i, forward_ms, tuned_row) -> list[dict]:
    """Speed/recall trade-off of one approximate index over its search depth (nprobe or efSearch)."""
    from semanom_ros.core.search.faiss_backend import search_depth, set_search_depth

    tuned = search_depth(index)
    depths = (4, 8, 16, 32, 64, 128) if kind != "hnsw" else (16, 32, 64, 128, 192, 256, 384)
    if tuned not in depths:
        depths = tuple(sorted((*depths, tuned)))
    rows = []
    for depth in depths:
        set_search_depth(index, depth)
        ms, _ = timed(lambda: index.search(one_frame, 1), 3)
        s, i = index.search(queries, 1)
        rows.append({"n": n, "type": kind, "depth": depth, "query_ms": ms, "vs_forward": ms / forward_ms,
                     "recall_at_1": float(np.mean(i[:, 0] == true_i)),
                     "mean_score_err": float(np.mean(true_s - s[:, 0])), "tuned": depth == tuned})
        print(f"    sweep {kind} depth {depth:>4}: {ms:8.1f} ms recall@1 {rows[-1]['recall_at_1']:.3f}", flush=True)
    set_search_depth(index, tuned)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="bank sizes, comma separated (e.g. 1e4,1e5,1e6,2e6)")
    ap.add_argument("--types", default="quick",
                    help=f"'quick' (skip slow combinations), 'all', or a list of {ALL_TYPES}")
    ap.add_argument("--threads", type=int, default=0, help="threads for faiss, torch and BLAS (0 = all cores)")
    ap.add_argument("--query-frames", type=int, default=5, help="test frames whose patches measure recall")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of one frame's search (median)")
    ap.add_argument("--target-recall", type=float, default=0.97, help="recall@1 the nprobe/efSearch tuner aims at")
    ap.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node")
    ap.add_argument("--ef-construction", type=int, default=64, help="HNSW build depth")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0 = about 4 sqrt(N))")
    ap.add_argument("--sweep", default="", help="index types whose nprobe/efSearch is swept (comma list; the "
                    "auto row's approximate index is always swept)")
    ap.add_argument("--noise", type=float, default=0.005,
                    help="per-dimension Gaussian noise of the synthetic re-drives (0.005: two re-drives of a patch are "
                    "as similar, cosine ~0.99, as real frames 12 steps apart are to their nearest bank patch)")
    ap.add_argument("--json-name", default="search_scaling.json", help="file name of the JSON results under --out")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    threads = pin_threads(args.threads)
    from semanom_ros.core.search.faiss_backend import build_index, index_bytes, search_depth
    from semanom_ros.core.search.spec import IndexSpec

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    quick = args.types == "quick"
    types = ALL_TYPES if args.types in ("quick", "all") else tuple(t.strip() for t in args.types.split(","))
    real, query_frames = real_embeddings(args.out / "cache", 224, args.query_frames)
    queries = np.concatenate(query_frames).astype(np.float32)
    one_frame = np.ascontiguousarray(query_frames[0], np.float32)
    print(f"threads={threads}; real bank vectors {len(real)}; queries {len(queries)} from {len(query_frames)} test "
          f"frames; one frame = {len(one_frame)} patches", flush=True)
    forward_ms = dinov2_forward_ms(224, 5)
    print(f"DINOv2-S forward at input height 224 (1 frame, fp32, {threads} threads): {forward_ms:.0f} ms", flush=True)

    rows, sweep_rows = [], []
    for n in sizes:
        t0 = time.perf_counter()
        bank = synthetic_bank(real, n, seed=n, noise=args.noise)
        gen_s = time.perf_counter() - t0
        # Ground truth (and the NumPy baseline) from exact fp32 search.
        x32 = bank.astype(np.float32)
        all_true_s, all_true_i = numpy_search(x32, queries)
        true_s, true_i = all_true_s, all_true_i
        for kind in types:
            if quick and n > QUICK_LIMITS[kind]:
                print(f"  n={n:>9} {kind:<9} skipped in quick mode (use --types all)", flush=True)
                continue
            row = {"n": n, "type": kind}
            reps = args.repeats if n <= 100_000 or kind in ("ivf", "ivfpq", "hnsw") else 2
            if kind == "numpy":
                ms, _ = timed(functools.partial(numpy_search, x32, one_frame), reps)  # binds x32 now: deleted later
                ids, sims = true_i, true_s = all_true_i, all_true_s
                row.update(build_s=0.0, bytes_per_vector=x32.itemsize * x32.shape[1], query_ms=ms)
            else:
                if kind == "flat":
                    del x32  # the flat index holds its own float32 copy; never keep both
                    gc.collect()
                if kind == "auto":  # the product: default bank settings, probe-tuned depth
                    pbank = product_bank(bank)
                    t_build = time.perf_counter()
                    index = pbank.search_index.ensure()
                    info = dict(pbank.index_info, build_s=time.perf_counter() - t_build)
                    print(f"    auto -> {info['type']} depth {info['search_depth']}; "
                          f"probe: {info.get('recall_probe')}; curve {info.get('recall_curve')}", flush=True)
                else:
                    spec = IndexSpec(type=kind, target_recall=args.target_recall, seed=0, hnsw_m=args.hnsw_m,
                                     ef_construction=args.ef_construction, nlist=args.nlist)
                    index, info = build_index(bank, spec)
                ms, _ = timed(lambda: index.search(one_frame, 1), reps)
                # Exact types: one frame is enough to confirm recall 1 (a full pass costs minutes at 1e6).
                scored = queries if kind in ("ivf", "ivfpq", "hnsw", "auto") or n <= 100_000 else one_frame
                found_s, found_i = index.search(scored, 1)
                ids, sims = found_i[:, 0], found_s[:, 0]
                true_s, true_i = (all_true_s, all_true_i) if len(scored) == len(queries) else (
                    all_true_s[: len(one_frame)], all_true_i[: len(one_frame)])
                row.update(build_s=info["build_s"], bytes_per_vector=index_bytes(index) / n, query_ms=ms,
                           depth=search_depth(index), build_recall=info["recall_at_1"], params=info["params"],
                           resolved=info["type"], recall_curve=info.get("recall_curve"))
                if kind == "auto":
                    row["type"] = f"auto ({info['type']})"
                if kind in args.sweep.split(",") or (kind == "auto" and info["type"] != "flat"):
                    sweep_rows += sweep(index, info["type"], n, one_frame, queries, all_true_s, all_true_i,
                                        forward_ms, row)
                del index
                if kind == "auto":
                    del pbank
                gc.collect()
                if kind == "flat":
                    x32 = bank.astype(np.float32)
            row["recall_at_1"] = float(np.mean(ids == true_i))
            # What the anomaly score sees: how far the found similarity is below the true best.
            row["mean_score_err"] = float(np.mean(true_s - sims))
            row["max_score_err"] = float(np.max(true_s - sims))
            row["vs_forward"] = row["query_ms"] / forward_ms
            rows.append(row)
            print(f"  n={n:>9} {kind:<9} query {row['query_ms']:9.1f} ms  recall@1 {row['recall_at_1']:.3f}  "
                  f"score err mean {row['mean_score_err']:.4f} max {row['max_score_err']:.4f}  "
                  f"{row['bytes_per_vector']:.0f} B/vec  build {row['build_s']:.1f} s  depth {row.get('depth')}",
                  flush=True)
        base = next((r for r in rows if r["n"] == n and r["type"] == "numpy"), None)
        for r in rows:
            if r["n"] == n and base:
                r["speedup_vs_numpy"] = base["query_ms"] / r["query_ms"]
        del x32, bank
        gc.collect()
        print(f"  (bank of {n} generated in {gen_s:.1f} s)", flush=True)

    table = markdown_table(
        rows,
        [("n", "bank vectors"), ("type", "index"), ("depth", "nprobe/ef"), ("query_ms", "1-frame query ms"),
         ("speedup_vs_numpy", "x NumPy"), ("vs_forward", "/ DINOv2 fwd"), ("recall_at_1", "recall@1"),
         ("mean_score_err", "mean score err"), ("build_recall", "build-time recall"), ("bytes_per_vector", "B/vector"),
         ("build_s", "build s")],
    )
    sweep_table = markdown_table(
        sweep_rows,
        [("n", "bank vectors"), ("type", "index"), ("depth", "nprobe/ef"), ("tuned", "tuned pick"),
         ("query_ms", "1-frame query ms"), ("vs_forward", "/ DINOv2 fwd"), ("recall_at_1", "recall@1"),
         ("mean_score_err", "mean score err")],
    )
    print()
    print(f"DINOv2-S forward (224 x 392 input, {threads} threads): {forward_ms:.0f} ms; query = 448 patches, k=1")
    print(table)
    if sweep_rows:
        print()
        print(sweep_table)
    path = save_json(args.out, args.json_name,
                     {"machine": machine(), "threads": threads, "forward_ms_224": forward_ms, "rows": rows,
                      "sweep": sweep_rows, "queries": len(queries), "table_md": table, "sweep_md": sweep_table})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
