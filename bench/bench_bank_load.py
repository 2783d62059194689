#!/usr/bin/env python3
"""Cost of the bank's load-time integrity checks, per 10^6 vectors.

A synthetic bank of N float16 unit vectors (DINOv2-S: 384-d, 448 patches per frame) is saved and
loaded back memory-mapped. Timed on the warm page cache (the file was just written; a cold read
adds the disk's time for N x D x 2 bytes, which any full pass pays):

- ``finite``: :func:`first_non_finite_row`, the check every load runs (exponent bits, chunked);
- ``isfinite``: ``np.isfinite(...).all()`` over the same chunks, the obvious alternative;
- ``frame table``: :func:`check_frame_table` (runs on every load too);
- ``load`` / ``load --verify``: ``NominalBank.load`` without / with blake2b re-hashing of every file.

    python bench/bench_bank_load.py --sizes 1e5,1e6
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine, markdown_table, pin_threads, save_json, timed
from semanom_ros.core.bank import ModelSignature, NominalBank
from semanom_ros.core.bank.persist import check_frame_table, first_non_finite_row


def synthetic_bank(n: int, dim: int, per_frame: int, seed: int = 0) -> NominalBank:
    rng = np.random.default_rng(seed)
    bank = NominalBank(ModelSignature("synthetic", "f" * 16, 224, dim))
    for frame, start in enumerate(range(0, n, per_frame)):
        v = rng.standard_normal((min(per_frame, n - start), dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        bank.add_frame(v, source="synthetic", index=frame)
    return bank


def chunked_isfinite(vectors: np.ndarray, rows: int = 1 << 14) -> bool:
    return all(np.isfinite(vectors[s : s + rows]).all() for s in range(0, len(vectors), rows))


def measure(n: int, dim: int, per_frame: int, repeats: int, root: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    bank = synthetic_bank(n, dim, per_frame)
    path = bank.save(root / f"bank_{n}")
    build_s = time.perf_counter() - t0
    del bank
    loaded = NominalBank.load(path, verify=False)
    vectors, meta, frames = loaded.vectors, loaded.vector_meta, loaded.frames
    per_million = 1e6 / n
    finite_ms, _ = timed(lambda: first_non_finite_row(vectors), repeats)
    isfinite_ms, _ = timed(lambda: chunked_isfinite(vectors), repeats)
    table_ms, _ = timed(lambda: check_frame_table(path, frames, meta, len(vectors), 1), repeats)
    load_ms, _ = timed(lambda: NominalBank.load(path, verify=False), repeats)
    verify_ms, _ = timed(lambda: NominalBank.load(path, verify=True), repeats)
    return {
        "vectors": n,
        "dim": dim,
        "bytes": int(vectors.nbytes),
        "build_and_save_s": round(build_s, 2),
        "finite_ms_per_1e6": round(finite_ms * per_million, 1),
        "isfinite_ms_per_1e6": round(isfinite_ms * per_million, 1),
        "frame_table_ms_per_1e6": round(table_ms * per_million, 1),
        "load_ms_per_1e6": round(load_ms * per_million, 1),
        "load_verify_ms_per_1e6": round(verify_ms * per_million, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e5,1e6", help="bank sizes in vectors, comma-separated")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--per-frame", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    pin_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_bank_load_") as tmp:
        for size in args.sizes.split(","):
            rows.append(measure(int(float(size)), args.dim, args.per_frame, args.repeats, Path(tmp)))
            print(rows[-1], flush=True)
    print(markdown_table(rows, [
        ("vectors", "vectors"), ("dim", "dim"), ("finite_ms_per_1e6", "finite check ms / 1e6"),
        ("isfinite_ms_per_1e6", "np.isfinite ms / 1e6"), ("frame_table_ms_per_1e6", "frame table ms / 1e6"),
        ("load_ms_per_1e6", "load ms / 1e6"), ("load_verify_ms_per_1e6", "load --verify ms / 1e6"),
    ]))
    save_json(args.out, "bank_load", {"machine": machine(), "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
