"""OWLv2 box proposals and SAM 2 masks, plus the pure box geometry (NMS, merging of duplicates).

The models are tiny random-init checkpoints saved and reloaded through from_pretrained (no hub
access).
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from conftest import textured_frame
from semanom_ros.core import ConfigError, ImageError, ModelError
from semanom_ros.core.instances.detector import (
    BoxProposer,
    box_iou,
    merge_overlapping_boxes,
    non_max_suppression,
    resolve_checkpoint,
)
from semanom_ros.core.instances.segmenter import Sam2Segmenter, clip_masks_to_boxes
from tiny_models import save_tiny_dinov2, save_tiny_owlv2, save_tiny_sam2


@pytest.fixture(scope="module")
def owl(tmp_path_factory) -> str:
    return str(save_tiny_owlv2(tmp_path_factory.mktemp("owl")))


@pytest.fixture(scope="module")
def sam(tmp_path_factory) -> str:
    return str(save_tiny_sam2(tmp_path_factory.mktemp("sam")))


# -- box geometry -----------------------------------------------------------------------------------
def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]], atol=1e-6)


def test_merge_joins_duplicates_into_their_union_keeping_the_best_score_and_both_labels():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 102, 101], [300, 300, 340, 340]], np.float32)
    out_boxes, scores, labels = merge_overlapping_boxes(boxes, [0.6, 0.9, 0.5], ["car", "truck", "sign"], iou=0.7)
    np.testing.assert_allclose(out_boxes, [[0, 0, 102, 101], [300, 300, 340, 340]])
    np.testing.assert_allclose(scores, [0.9, 0.5])
    assert labels == ["truck|car", "sign"]  # labels in order of score


def test_merge_absorbs_a_large_nested_part_but_keeps_a_small_object_on_a_large_one():
    truck = [0, 0, 200, 100]
    cab = [0, 0, 80, 100]  # 40 % of the truck, fully inside: over-segmentation of one object
    light = [150, 10, 165, 40]  # 2 % of the truck, inside it: its own object
    out_boxes, scores, labels = merge_overlapping_boxes(
        np.array([truck, cab, light], np.float32), [0.8, 0.7, 0.6], ["truck", "cab", "traffic light"],
        iou=0.7, containment=0.9, min_area_ratio=0.25,
    )
    np.testing.assert_allclose(out_boxes, [truck, light])
    assert labels == ["truck|cab", "traffic light"]
    # Without the area-ratio guard, containment alone swallows the light too.
    _, _, labels_all = merge_overlapping_boxes(
        np.array([truck, cab, light], np.float32), [0.8, 0.7, 0.6], ["truck", "cab", "traffic light"],
        iou=0.7, containment=0.9, min_area_ratio=0.0,
    )
    assert labels_all == ["truck|cab|traffic light"]


def test_merge_repeats_until_a_growing_union_absorbs_a_third_box():
    # a and b merge; their union then overlaps c enough although a and c alone do not.
    a, b, c = [0, 0, 10, 10], [0, 0, 10, 20], [0, 9, 10, 20]
    out_boxes, _, _ = merge_overlapping_boxes(np.array([a, c, b], np.float32), [0.9, 0.8, 0.7], ["a", "c", "b"],
                                              iou=0.5, containment=0.95, min_area_ratio=0.9)
    np.testing.assert_allclose(out_boxes, [[0, 0, 10, 20]])


def test_merge_handles_empty_input_and_rejects_mismatched_lengths():
    boxes, scores, labels = merge_overlapping_boxes(np.zeros((0, 4)), [], [])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels == []
    with pytest.raises(ValueError, match="differ in length"):
        merge_overlapping_boxes(np.zeros((2, 4)), [0.1], ["a", "b"])
    with pytest.raises(ConfigError, match="detector_merge_iou"):
        merge_overlapping_boxes(np.zeros((1, 4)), [0.1], ["a"], iou=0.0)


def test_nms_keeps_the_best_of_overlapping_boxes_and_zero_scores():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = non_max_suppression(boxes, np.array([0.0, 0.5, 0.0]), iou=0.5)
    assert sorted(keep.tolist()) == [1, 2]
    assert non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


# -- OWLv2 ------------------------------------------------------------------------------------------
def test_class_agnostic_proposals_are_frame_boxes_sorted_and_capped(owl):
    proposer = BoxProposer(owl, queries=None, score_threshold=0.0, top_k=5)
    frame = textured_frame(0, 90, 160)
    props = proposer.propose(frame)
    assert 1 <= len(props) <= 5
    assert props.labels == ["object"] * len(props)
    assert np.all(np.diff(props.scores) <= 0)
    assert np.all((props.scores >= 0) & (props.scores <= 1))
    b = props.boxes
    assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= 160) and np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= 90)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    # No pair of survivors overlaps as much as the merge IoU.
    iou = box_iou(b, b)
    assert (iou[~np.eye(len(b), dtype=bool)] < proposer.merge_iou).all()
    # A threshold above every score gives no boxes.
    assert len(BoxProposer(owl, score_threshold=1.0).propose(frame)) == 0


def test_text_queries_label_boxes_with_the_query_texts(owl):
    queries = ["a car", "a traffic light"]
    proposer = BoxProposer(owl, queries=queries, score_threshold=0.0, top_k=4, input_size=64)
    props = proposer.propose(textured_frame(1, 90, 160))
    assert len(props) >= 1
    for label in props.labels:
        assert set(label.split("|")) <= set(queries)
    assert proposer.describe()["queries"] == queries
    assert proposer.input_size == 64  # interpolated position embeddings


def test_boxes_map_back_through_the_square_padding(owl):
    # A wide frame is padded at the bottom to a square; the same frame already padded with black
    # is the same OWLv2 input, so boxes must come back in the same pixel coordinates.
    proposer = BoxProposer(owl, score_threshold=0.0, top_k=3)
    frame = textured_frame(2, 90, 160)
    padded = np.zeros((160, 160, 3), np.uint8)
    padded[:90] = frame
    x1, s1, _ = proposer.raw(frame)
    x2, s2, _ = proposer.raw(padded)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    clipped = x2.copy()
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, 90)
    np.testing.assert_allclose(x1, clipped, atol=0.05)


def test_proposer_errors_name_the_setting(owl, tmp_path):
    with pytest.raises(ConfigError, match="detector_input_size"):
        BoxProposer(owl, input_size=50)
    with pytest.raises(ModelError, match="detector_model.*no config.json"):
        BoxProposer(str(tmp_path / "missing"))
    dino = save_tiny_dinov2(tmp_path / "dino")
    with pytest.raises(ModelError, match="not OWLv2"):
        BoxProposer(str(dino))
    no_tok = save_tiny_owlv2(tmp_path / "owl_no_tokenizer", with_tokenizer=False)
    with pytest.raises(ModelError, match="tokenizer"):
        BoxProposer(str(no_tok), queries=["a car"])
    assert resolve_checkpoint("google/owlv2-base-patch16-ensemble", "detector_model", "x") == (
        "google/owlv2-base-patch16-ensemble"
    )


# -- SAM 2 ------------------------------------------------------------------------------------------
def test_masks_are_frame_sized_and_stay_near_their_boxes(sam):
    seg = Sam2Segmenter(sam, box_margin=0.1)
    assert seg.image_size == 256
    frame = textured_frame(3, 90, 160)
    boxes = np.array([[10, 10, 50, 40], [100, 20, 150, 85]], np.float32)
    out = seg.segment(frame, boxes)
    assert out.masks.shape == (2, 90, 160) and out.masks.dtype == bool
    assert out.object_present.all() and out.quality.shape == (2,)
    for mask, (x1, y1, x2, y2) in zip(out.masks, boxes):
        ys, xs = np.nonzero(mask)
        # The primed tiny model marks everything; the margin clip leaves box + 10 %.
        mx, my = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
        assert xs.min() >= np.floor(x1 - mx) and xs.max() < np.ceil(x2 + mx)
        assert ys.min() >= np.floor(y1 - my) and ys.max() < np.ceil(y2 + my)
        assert mask[int(y1) : int(y2), int(x1) : int(x2)].all()


def test_no_boxes_skip_the_image_encoder_and_bad_boxes_are_refused(sam, monkeypatch):
    seg = Sam2Segmenter(sam)
    monkeypatch.setattr(seg.model, "get_image_embeddings", lambda *_: pytest.fail("encoder ran for no boxes"))
    out = seg.segment(textured_frame(4, 90, 160), np.zeros((0, 4)))
    assert out.masks.shape == (0, 90, 160)
    with pytest.raises(ImageError, match=r"\(n, 4\)"):
        seg.segment(textured_frame(4, 90, 160), np.zeros((3, 5)))
    with pytest.raises(ImageError, match="NaN"):
        seg.segment(textured_frame(4, 90, 160), np.array([[0, 0, np.nan, 5]]))


def test_boxes_sam_finds_no_object_in_come_back_empty(tmp_path):
    folder = save_tiny_sam2(tmp_path / "sam_empty")
    import torch
    from transformers import Sam2Model

    model = Sam2Model.from_pretrained(folder)
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(-5.0)
    model.save_pretrained(folder)
    out = Sam2Segmenter(str(folder)).segment(textured_frame(5, 90, 160), np.array([[10, 10, 60, 60]]))
    assert not out.object_present[0] and not out.masks.any()


def test_video_checkpoints_load_as_the_image_model(tmp_path):
    folder = save_tiny_sam2(tmp_path / "sam_video", video=True)
    out = Sam2Segmenter(str(folder)).segment(textured_frame(6, 90, 160), np.array([[10, 10, 60, 60]]))
    assert out.masks.shape == (1, 90, 160) and out.masks.any()


def test_segmenter_errors_name_the_setting(owl, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="not SAM 2"):
        Sam2Segmenter(owl)
    with pytest.raises(ConfigError, match="segmenter_backend"):
        Sam2Segmenter(owl, backend="onnx")
    # The sam2 backend is imported only when selected; without the package the error says what to do.
    monkeypatch.setitem(sys.modules, "sam2", None)
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(ModelError, match="sam2 package"):
        Sam2Segmenter("facebook/sam2.1-hiera-tiny", backend="sam2")


def test_sam2_package_backend_adapter(monkeypatch, tmp_path):
    """The 'sam2' backend with a stand-in for Meta's package (it needs torchvision, absent here)."""
    import torch

    calls = {}

    class FakePredictor:
        def __init__(self, model):
            self.model = model

        @classmethod
        def from_pretrained(cls, model_id, device="cpu"):
            calls["hub"] = (model_id, device)
            return cls(torch.nn.Linear(2, 2))

        def set_image(self, rgb):
            calls["image"] = rgb.shape

        def predict(self, box, multimask_output):
            h, w = calls["image"][:2]
            masks = np.zeros((len(box), 1, h, w), np.float32)
            for m, (x1, y1, x2, y2) in zip(masks, box.astype(int)):
                m[0, y1:y2, x1:x2] = 1.0
            masks[-1] = 0.0  # the package blanks masks without an object
            out = masks if len(box) > 1 else masks[0]
            return out, np.full((len(box), 1), 0.9, np.float32), None

    build = types.ModuleType("sam2.build_sam")
    build.HF_MODEL_ID_TO_FILENAMES = {"facebook/sam2.1-hiera-tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml",
                                                                     "sam2.1_hiera_tiny.pt")}
    build.build_sam2 = lambda cfg, ckpt, device="cpu": (
        calls.__setitem__("built", (cfg, ckpt)) or torch.nn.Linear(2, 2)
    )
    predictor_mod = types.ModuleType("sam2.sam2_image_predictor")
    predictor_mod.SAM2ImagePredictor = FakePredictor
    monkeypatch.setitem(sys.modules, "sam2", types.ModuleType("sam2"))
    monkeypatch.setitem(sys.modules, "sam2.build_sam", build)
    monkeypatch.setitem(sys.modules, "sam2.sam2_image_predictor", predictor_mod)

    seg = Sam2Segmenter("facebook/sam2.1-hiera-tiny", backend="sam2", device="cpu")
    assert calls["hub"] == ("facebook/sam2.1-hiera-tiny", "cpu")
    frame = textured_frame(7, 90, 160)
    out = seg.segment(frame, np.array([[10, 10, 40, 40], [60, 20, 100, 80]], np.float32))
    assert out.masks.shape == (2, 90, 160)
    assert out.masks[0, 10:40, 10:40].all() and out.object_present.tolist() == [True, False]
    single = seg.segment(frame, np.array([[10, 10, 40, 40]], np.float32))
    assert single.masks.shape == (1, 90, 160)
    # A folder holding the original checkpoint is built with the package's matching config.
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"")
    Sam2Segmenter(str(tmp_path), backend="sam2", device="cpu")
    assert calls["built"] == ("configs/sam2.1/sam2.1_hiera_t.yaml", str(tmp_path / "sam2.1_hiera_tiny.pt"))
    with pytest.raises(ModelError, match="no SAM 2 checkpoint"):
        Sam2Segmenter(str(tmp_path / "empty_dir_that_exists_not"), backend="sam2")


def test_clip_masks_to_boxes_cuts_leaks_far_from_the_box():
    masks = np.ones((1, 50, 50), bool)
    clip_masks_to_boxes(masks, np.array([[10, 10, 20, 20]], np.float32), margin=0.0)
    ys, xs = np.nonzero(masks[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 19, 10, 19)
