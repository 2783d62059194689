#!/usr/bin/env bash
# Run the benchmark suite and print its tables (markdown); JSON results go to bench/results/ (git-ignored).
#
#   bench/run_all.sh                 quick: search scaling at 1e4, 1e5, 1e6 vectors; pipeline at heights 224 and 448
#   bench/run_all.sh --full          adds 2e6 vectors and every index type at every size (tens of minutes on 2 cores)
#   THREADS=1 bench/run_all.sh       thread count for torch, faiss and BLAS (default: all cores, nproc)
#
# Needs the real DINOv2-S weights and the highway data under $SEMANOM_SHARED (default ../shared).
# Benchmarks print figures; nothing here asserts a timing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
THREADS="${THREADS:-$(nproc)}"  # explicit: OMP_NUM_THREADS=1 below would make 0 mean one thread
OUT="${OUT:-$HERE/results}"
export SEMANOM_SHARED="${SEMANOM_SHARED:-$(dirname "$ROOT")/shared}"
# Each library sizes its own pool from --threads; the OpenMP default must not add a third.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

SIZES="1e4,1e5,1e6"
TYPES="quick"
FRAMES=12
if [[ "${1:-}" == "--full" ]]; then
  SIZES="1e4,1e5,1e6,2e6"
  TYPES="all"
  FRAMES=30
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--full]" >&2
  exit 2
fi

cd "$HERE"
echo "== search scaling (sizes $SIZES, types $TYPES, threads $THREADS) =="
"$PY" bench_search_scaling.py --sizes "$SIZES" --types "$TYPES" --threads "$THREADS" --out "$OUT"
echo
echo "== pipeline per-stage latency (heights 224, 448) =="
"$PY" bench_pipeline.py --heights 224,448 --frames "$FRAMES" --threads "$THREADS" --out "$OUT"
if [[ -f "$ROOT/semanom_ros/core/coreset.py" && -f bench_coreset_auroc.py ]]; then
  echo
  echo "== coreset size vs image AUROC =="
  "$PY" bench_coreset_auroc.py --threads "$THREADS" --out "$OUT"
fi
