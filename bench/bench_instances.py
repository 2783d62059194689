"""Per-stage latency of instance mode (OWLv2 -> SAM 2 -> DINOv2 mask averaging -> search) next to patch mode.

No OWLv2 or SAM 2 weights are reachable here, so both are full-size *random-init* models with the
real checkpoints' architectures (same compute): OWLv2-base patch16 at its 960 x 960 input
(google/owlv2-base-patch16-ensemble) and SAM 2.1 hiera-tiny at 1024 x 1024 (facebook/sam2.1-hiera-tiny).
DINOv2-S/14 uses the real weights in ../shared/models/dinov2-small. Each model is saved and loaded
through the same from_pretrained path the pipeline uses. One 960 x 540 highway frame; the median of
``--runs`` runs per stage. The detector's score threshold is 0 so it always returns ``--boxes`` boxes
(random weights would otherwise give an arbitrary count).

Banks are synthetic unit vectors of the sizes a 150-frame nominal sequence gives: 150 x 448 patches
(960 x 540 at input height 224 -> 16 x 28 grid) and 150 x ``--boxes`` instances.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_instances.py [--runs 3] [--boxes 10]
        [--device cpu|cuda] [--dtype auto|float16] [--variants] [--cache DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import cv2  # noqa: E402
import torch  # noqa: E402

from semanom_ros.core import FeatureExtractor, NominalBank  # noqa: E402
from semanom_ros.core.bank import ModelSignature  # noqa: E402
from semanom_ros.core.instances.detector import BoxProposer  # noqa: E402
from semanom_ros.core.instances import InstancePipeline, mask_average_embeddings  # noqa: E402
from semanom_ros.core.maps import threshold_components, upsample_scores  # noqa: E402
from semanom_ros.core.scoring import knn_scores, patch_score_grid  # noqa: E402
from semanom_ros.core.instances.segmenter import Sam2Segmenter  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("SEMANOM_SHARED", REPO.parent / "shared"))


def save_full_size_models(folder: Path) -> tuple[Path, Path]:
    """Random-init OWLv2-base/16 @ 960 and SAM 2.1 hiera-tiny (transformers defaults), saved once."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Sam2Config, Sam2Model

    owl, sam = folder / "owlv2-base-patch16-random", folder / "sam2.1-hiera-tiny-random"
    if not (owl / "config.json").is_file():
        torch.manual_seed(0)
        # owlv2-base-patch16-ensemble: ViT-B/16 vision tower at 960 x 960 (60 x 60 patches).
        cfg = Owlv2Config(vision_config={"image_size": 960, "patch_size": 16})
        Owlv2ForObjectDetection(cfg).eval().save_pretrained(owl)
    if not (sam / "config.json").is_file():
        torch.manual_seed(0)
        Sam2Model(Sam2Config()).eval().save_pretrained(sam)  # defaults = hiera-tiny, 1024 x 1024
    return owl, sam


def median_ms(fn, runs: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall ms over ``runs`` calls; the median CPU ms of the same calls goes in LAST_CPU_MS.

    With one torch thread the process CPU time is close to what the stage costs on an idle core,
    whereas wall time grows with whatever else the shared cores are running.
    """
    global LAST_CPU_MS
    out = None
    for _ in range(warmup):
        out = fn()
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    LAST_CPU_MS = statistics.median(cpu)
    return statistics.median(times), out


LAST_CPU_MS = 0.0


def random_bank(n: int, dim: int, rng: np.random.Generator, kind: str) -> NominalBank:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sig = ModelSignature(model="bench", fingerprint="bench", input_height=224, dim=dim)
    bank = NominalBank.from_vectors(vectors, sig, frame_of_vector=np.arange(n) // max(1, n // 150), kind=kind)
    bank.search_index.ensure()
    return bank


def load_frame() -> np.ndarray:
    path = shared_dir() / "data" / "highway" / "nominal" / "0000.jpg"
    image = cv2.imread(str(path))
    if image is None:
        print(f"(no highway frame at {path}; using a random 960x540 frame)")
        return np.random.default_rng(0).integers(0, 255, (540, 960, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--boxes", type=int, default=10, help="boxes per frame (detector top_k)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--input-height", type=int, default=224)
    ap.add_argument("--variants", action="store_true", help="also time OWLv2 at 768/480 and SAM 2 with 1/20 boxes")
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep the random-init checkpoints in")
    args = ap.parse_args()

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    dino_path = shared_dir() / "models" / "dinov2-small"
    if not (dino_path / "model.safetensors").is_file():
        sys.exit(f"real DINOv2-S weights not found under {dino_path}; set SEMANOM_SHARED")
    tmp = None
    cache = args.cache
    if cache is None:
        tmp = tempfile.TemporaryDirectory(prefix="semanom_bench_")
        cache = Path(tmp.name)
    cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    owl_path, sam_path = save_full_size_models(cache)
    print(f"random-init checkpoints ready in {time.perf_counter() - t:.1f} s ({cache})")

    t = time.perf_counter()
    extractor = FeatureExtractor(str(dino_path), args.input_height, args.device, args.dtype)
    t_dino = time.perf_counter() - t
    t = time.perf_counter()
    proposer = BoxProposer(str(owl_path), None, score_threshold=0.0, top_k=args.boxes, device=args.device,
                           dtype=args.dtype)
    t_owl = time.perf_counter() - t
    t = time.perf_counter()
    segmenter = Sam2Segmenter(str(sam_path), device=args.device, dtype=args.dtype)
    t_sam = time.perf_counter() - t
    print(f"load (incl. weights fingerprint): DINOv2-S {t_dino:.1f} s, OWLv2-base {t_owl:.1f} s, "
          f"SAM2.1-tiny {t_sam:.1f} s")
    pipeline = InstancePipeline(proposer, segmenter, extractor, min_mask_area_px=0)

    rgb = load_frame()
    rng = np.random.default_rng(0)
    features = extractor.extract(rgb)
    h, w = features.grid_shape
    patch_bank = random_bank(150 * h * w, extractor.dim, rng, "patch")
    instance_bank = random_bank(150 * args.boxes, extractor.dim, rng, "instance")

    runs = args.runs
    cpu = {}
    ms_dino, features = median_ms(lambda: extractor.extract(rgb), runs)
    cpu['dino'] = LAST_CPU_MS
    ms_owl, props = median_ms(lambda: proposer.propose(rgb), runs)
    cpu['owl'] = LAST_CPU_MS
    boxes = props.boxes
    if len(boxes) < args.boxes:  # random weights: pad with fixed boxes so SAM 2 always gets --boxes prompts
        extra = np.array([[40 * i, 100, 40 * i + 120, 300] for i in range(args.boxes - len(boxes))], np.float32)
        boxes = np.concatenate([boxes, extra])
    ms_sam, seg = median_ms(lambda: segmenter.segment(rgb, boxes), runs)
    cpu['sam'] = LAST_CPU_MS
    masks = seg.masks
    masks[:, 100:300, 100:400] = True  # random SAM weights may give empty masks; averaging cost needs area
    ms_embed, emb = median_ms(lambda: mask_average_embeddings(features.patches, masks, features.image_size), runs)
    cpu['embed'] = LAST_CPU_MS
    ms_isearch, _ = median_ms(lambda: knn_scores(instance_bank, emb.vectors, 1), runs)
    cpu['search'] = LAST_CPU_MS

    def patch_scoring():
        grid = patch_score_grid(patch_bank, features.patches, 1)
        score_map = upsample_scores(grid, features.image_size)
        return threshold_components(score_map, 0.2, 500)

    ms_patch, _ = median_ms(patch_scoring, runs)
    cpu['patch'] = LAST_CPU_MS
    # The whole instance path through InstancePipeline.detect (proposal count as the model gives it).
    ms_detect, found = median_ms(lambda: pipeline.detect(rgb, features), 1, warmup=0)

    instance_total = ms_dino + ms_owl + ms_sam + ms_embed + ms_isearch
    patch_total = ms_dino + ms_patch
    if args.device.startswith("cuda"):
        device = f"{args.device} ({torch.cuda.get_device_name()})"
    else:
        device = f"{args.device} ({torch.get_num_threads()} torch thread(s))"
    print()
    print(f"one {rgb.shape[1]}x{rgb.shape[0]} frame, {len(boxes)} boxes, device {device}, dtype {proposer.dtype}, "
          f"median of {runs} runs")
    cpu_instance = cpu["dino"] + cpu["owl"] + cpu["sam"] + cpu["embed"] + cpu["search"]
    cpu_patch = cpu["dino"] + cpu["patch"]
    print("| stage | input | wall ms | CPU ms | share (CPU) |")
    print("|---|---|---|---|---|")
    rows = [
        ("OWLv2-base/16 proposals", f"{proposer.input_size}x{proposer.input_size}", ms_owl, cpu["owl"]),
        ("SAM 2.1 hiera-tiny: image embedding + masks",
         f"{segmenter.image_size}x{segmenter.image_size}, {len(boxes)} boxes",
         ms_sam, cpu["sam"]),
        ("DINOv2-S/14 features", f"{features.input_size[0]}x{features.input_size[1]}", ms_dino, cpu["dino"]),
        ("mask averaging", f"{len(masks)} masks -> {h}x{w} grid", ms_embed, cpu["embed"]),
        ("instance search", f"{len(instance_bank)} instances", ms_isearch, cpu["search"]),
    ]
    for name, size, ms, c in rows:
        print(f"| {name} | {size} | {ms:.0f} | {c:.0f} | {100 * c / cpu_instance:.0f} % |")
    print(f"| **instance mode total** | | **{instance_total:.0f}** | **{cpu_instance:.0f}** | |")
    print(f"| patch mode: DINOv2 + search over {len(patch_bank)} patches + maps | | {patch_total:.0f} "
          f"| {cpu_patch:.0f} | |")
    print(f"\ninstance / patch ratio: {instance_total / patch_total:.1f}x wall, {cpu_instance / cpu_patch:.1f}x CPU")
    print(f"InstancePipeline.detect end to end (one run, {len(found.proposals)} proposals): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in found.timings_ms.items()))

    if args.variants:
        print("\nwhat cuts the dominant stages:")
        for size in (768, 480):
            small = BoxProposer(str(owl_path), None, score_threshold=0.0, top_k=args.boxes, input_size=size,
                                device=args.device, dtype=args.dtype)
            ms, _ = median_ms(lambda: small.propose(rgb), runs)
            print(f"  OWLv2 at {size}x{size}: {ms:.0f} ms wall, {LAST_CPU_MS:.0f} ms CPU "
                  f"({LAST_CPU_MS / cpu['owl']:.2f}x of 960)")
            small.release()
        encoder_ms, embeddings = median_ms(lambda: segmenter.encode(rgb), runs)
        print(f"  SAM 2 image encoder alone (once per frame): {encoder_ms:.0f} ms wall, {LAST_CPU_MS:.0f} ms CPU")
        for n in (1, 10, 20):
            many = np.tile(boxes[:1], (n, 1))
            ms, _ = median_ms(lambda: segmenter.decode(embeddings, many, features.image_size), runs)
            print(f"  SAM 2 mask decoder + upsampling, {n} box(es) in one batch: {ms:.0f} ms wall, "
                  f"{LAST_CPU_MS:.0f} ms CPU")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
