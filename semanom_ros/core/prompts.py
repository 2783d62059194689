"""Language-guided scoring: text prompts naming what belongs in the scene and what must never appear.

Text prompts give data-free outlier supervision (VL4AD, Zhong et al.): OWLv2's CLIP text tower
embeds each phrasing, OWLv2's image side gives a class embedding per location (its detection
head's ``class_predictor``, the same logits it ranks boxes with), and every location gets a
logit per phrasing.

Rules (all in :func:`ensemble_concepts`, :func:`prompt_anomaly_map`, :func:`fuse_score_maps`):

* **Max-logit prompt ensembling**: a concept's logit at a location is the maximum over its
  phrasings ("road", "asphalt road", "a photo of a road"): one good phrasing is enough.
* **Prompt score map** in [0, 1] per location:

  - with anomaly concepts: softmax over all concepts (nominal and anomaly), map = the summed
    probability of the anomaly concepts;
  - with nominal concepts only: map = ``1 - max_c sigmoid(logit_c)``: no nominal concept is
    confidently present (OWLv2's logits are trained for a per-query sigmoid; a softmax over the
    nominal concepts alone would only say which of them fits best, never "none of them").

  The map is cut to the frame (OWLv2 pads frames to a square) and resized to the patch grid.
* **Fusion** with the kNN patch score grid: ``fused = (1 - w) * knn + w * 2 * threshold * prompt``.
  The prompt map is rescaled so that its decision point 0.5 lands on the kNN threshold: where
  both maps sit at their decision points the fused score equals the threshold, and
  ``fused > threshold`` exactly when ``(1 - w) (knn - threshold) + w threshold (2 prompt - 1) > 0``.
  ``w = prompt_fusion_weight`` (0 = prompts off, 1 = prompts only).

Prompts are parameters: :meth:`PromptScorer.set_prompts` re-embeds the texts at run time.
Prompt entries are ``"concept"`` (expanded with :data:`DEFAULT_TEMPLATES`) or
``"concept: phrasing 1 | phrasing 2"`` (used as given), or a ``{concept: [phrasings]}`` mapping.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np
import torch

from .errors import ConfigError, ModelError
from .instances.detector import BoxProposer

DEFAULT_PROMPT_MODEL = "google/owlv2-base-patch16-ensemble"
# CLIP-style templates for a bare concept name (max-logit ensembled).
DEFAULT_TEMPLATES = ("{}", "a photo of a {}", "a {} in a driving scene")
_QUERY_TOKENS = 16  # OWLv2's text encoder was trained with queries padded to 16 tokens

PromptSpec = Mapping[str, Sequence[str]] | Sequence[str] | None


def parse_prompts(prompts: PromptSpec, templates: Sequence[str] = DEFAULT_TEMPLATES) -> dict[str, list[str]]:
    """``["road: asphalt road | the road", "sky"]`` or ``{"road": [...]}`` -> ``{concept: [phrasings]}``."""
    if prompts is None:
        return {}
    out: dict[str, list[str]] = {}
    if isinstance(prompts, Mapping):
        items = [(str(c), [str(p) for p in ([ps] if isinstance(ps, str) else ps)]) for c, ps in prompts.items()]
    elif isinstance(prompts, str):
        raise ConfigError(
            f"prompts: {prompts!r} must be a list of entries such as ['road: asphalt road | road', 'sky']"
        )
    else:
        items = []
        for entry in prompts:
            if not isinstance(entry, str):
                raise ConfigError(f"prompts: entry {entry!r} is not a string")
            concept, sep, rest = entry.partition(":")
            phrasings = [p.strip() for p in rest.split("|")] if sep else []
            items.append((concept, phrasings))
    for concept, phrasings in items:
        concept = concept.strip()
        if not concept:
            continue
        phrasings = [p for p in (q.strip() for q in phrasings) if p] or [t.format(concept) for t in templates]
        out.setdefault(concept, [])
        out[concept] += [p for p in phrasings if p not in out[concept]]
    return out


def ensemble_concepts(logits: np.ndarray, concept_of_phrasing: Sequence[int], num_concepts: int) -> np.ndarray:
    """Max-logit ensembling: (..., Q) phrasing logits -> (..., C) concept logits (max over each concept's phrasings)."""
    logits = np.asarray(logits, np.float32)
    owner = np.asarray(concept_of_phrasing)
    if logits.shape[-1] != len(owner):
        raise ValueError(f"{logits.shape[-1]} phrasing logits but {len(owner)} phrasing owners")
    out = np.full(logits.shape[:-1] + (num_concepts,), -np.inf, np.float32)
    for c in range(num_concepts):
        cols = np.flatnonzero(owner == c)
        if len(cols) == 0:
            raise ValueError(f"concept {c} has no phrasing")
        out[..., c] = logits[..., cols].max(axis=-1)
    return out


def prompt_anomaly_map(concept_logits: np.ndarray, num_nominal: int, temperature: float = 1.0) -> np.ndarray:
    """(..., C) concept logits, the first ``num_nominal`` nominal -> (...) anomaly probability in [0, 1].

    With anomaly concepts (C > num_nominal): softmax mass of the anomaly concepts. With nominal
    concepts only: ``1 - max sigmoid(logit)`` (no nominal concept present).
    """
    z = np.asarray(concept_logits, np.float64) / float(temperature)
    c = z.shape[-1]
    if num_nominal < 0 or num_nominal > c or c == 0:
        raise ValueError(f"num_nominal {num_nominal} outside [0, {c}]")
    if num_nominal == c:
        return (1.0 - 1.0 / (1.0 + np.exp(-z.max(axis=-1)))).astype(np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p[..., num_nominal:].sum(axis=-1).astype(np.float32)


def fuse_score_maps(knn_map: np.ndarray, prompt_map: np.ndarray, weight: float, threshold: float) -> np.ndarray:
    """``(1 - w) * knn + w * 2 * threshold * prompt`` on the kNN map's grid (prompt map resized if needed)."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"prompt_fusion_weight: {weight} must be in [0, 1]")
    knn = np.asarray(knn_map, np.float32)
    if weight == 0.0:
        return knn
    prompt = resize_map(prompt_map, knn.shape)
    return ((1.0 - weight) * knn + weight * 2.0 * float(threshold) * prompt).astype(np.float32)


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average (shrinking) or bilinear (growing) resize of a 2-D map to ``shape`` (rows, cols)."""
    values = np.asarray(values, np.float32)
    if values.shape == tuple(shape):
        return values
    shrinking = values.shape[0] > shape[0] or values.shape[1] > shape[1]
    return cv2.resize(values, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class PromptScorer:
    """Per-location prompt scores from OWLv2 (``Owlv2ForObjectDetection``).

    Loading and frame preprocessing (resize, pad to a square, CLIP normalisation) are the box
    proposer's (:class:`semanom_ros.core.detector.BoxProposer`); this class adds the text side.
    """

    def __init__(
        self,
        model: str = DEFAULT_PROMPT_MODEL,
        nominal_prompts: PromptSpec = None,
        anomaly_prompts: PromptSpec = None,
        input_size: int = 0,
        device: str = "auto",
        dtype: str = "auto",
        temperature: float = 1.0,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"prompt temperature: {temperature} must be positive")
        self.temperature = float(temperature)
        self._owl = BoxProposer(model, queries=None, input_size=input_size, device=device, dtype=dtype)
        self.model_id = model
        self.source = self._owl.source
        self._tokenizer = None
        self.nominal: dict[str, list[str]] = {}
        self.anomaly: dict[str, list[str]] = {}
        self._text: torch.Tensor | None = None
        self._owner: np.ndarray = np.zeros(0, np.int64)
        self.set_prompts(nominal_prompts, anomaly_prompts)

    # -- text ------------------------------------------------------------------------------------
    @property
    def concepts(self) -> list[str]:
        return list(self.nominal) + list(self.anomaly)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.source)
            except Exception as exc:
                raise ModelError(
                    f"prompt_model: the OWLv2 checkpoint {self.source!r} has no usable tokenizer ({exc}); "
                    "download the full checkpoint (tokenizer files included)"
                ) from None
        return self._tokenizer(texts, padding="max_length", truncation=True, max_length=_QUERY_TOKENS,
                               return_tensors="pt")

    def set_prompts(self, nominal_prompts: PromptSpec = None, anomaly_prompts: PromptSpec = None) -> None:
        """Replace the prompts and re-embed them (run-time parameter change)."""
        nominal, anomaly = parse_prompts(nominal_prompts), parse_prompts(anomaly_prompts)
        if not nominal and not anomaly:
            raise ConfigError(
                "nominal_prompts / anomaly_prompts: give at least one concept, e.g. ['road', 'car', 'sky']"
            )
        clash = sorted(set(nominal) & set(anomaly))
        if clash:
            raise ConfigError(f"prompts: {clash} named both nominal and anomalous")
        if not nominal:
            # Softmax needs something to compete with: without nominal concepts an anomaly concept
            # would always take all the mass. A generic background concept plays the nominal side.
            nominal = {"background": ["background", "road", "a photo of a street"]}
        phrasings, owner = [], []
        for ci, ps in enumerate(list(nominal.values()) + list(anomaly.values())):
            phrasings += ps
            owner += [ci] * len(ps)
        model = self._owl.model
        tokens = self._tokenize(phrasings)
        with torch.inference_mode():
            text = model.owlv2.get_text_features(
                input_ids=tokens["input_ids"].to(self._owl.device),
                attention_mask=tokens["attention_mask"].to(self._owl.device),
            )
        text = text.pooler_output if hasattr(text, "pooler_output") else text
        self._text = text[None].to(self._owl.dtype)  # (1, Q, D)
        self._owner = np.asarray(owner, np.int64)
        self.nominal, self.anomaly = nominal, anomaly

    # -- image -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def phrasing_logits(self, rgb: np.ndarray) -> np.ndarray:
        """(gh, gw, Q) OWLv2 class logits per location and phrasing, cut to the frame (padding removed)."""
        owl = self._owl
        pixels, scale = owl.preprocess(rgb)
        x = torch.from_numpy(pixels)[None].to(owl.device, owl.dtype)
        feature_map, _ = owl.model.image_embedder(pixel_values=x, interpolate_pos_encoding=owl._interpolate)
        b, gh, gw, d = feature_map.shape
        logits, _ = owl.model.class_predictor(feature_map.reshape(b, gh * gw, d), self._text)
        logits = logits[0].float().cpu().numpy().reshape(gh, gw, -1)
        # The frame occupies the top-left of the padded square: keep the rows/columns it covers.
        height, width = rgb.shape[:2]
        rows = max(1, min(gh, int(np.ceil(height / scale / owl.input_size * gh))))
        cols = max(1, min(gw, int(np.ceil(width / scale / owl.input_size * gw))))
        return logits[:rows, :cols]

    def concept_logits(self, rgb: np.ndarray) -> np.ndarray:
        """(gh, gw, C) max-logit ensembled concept logits, nominal concepts first."""
        return ensemble_concepts(self.phrasing_logits(rgb), self._owner, len(self.nominal) + len(self.anomaly))

    def score_map(self, rgb: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
        """Anomaly probability per location in [0, 1], resized to ``grid`` (e.g. the DINOv2 patch grid)."""
        prompt = prompt_anomaly_map(self.concept_logits(rgb), len(self.nominal), self.temperature)
        return resize_map(prompt, grid) if grid is not None else prompt

    def describe(self) -> dict:
        return {"model": self.model_id, "fingerprint": self._owl.fingerprint, "nominal": self.nominal,
                "anomaly": self.anomaly, "input_size": self._owl.input_size, "temperature": self.temperature}

    def release(self) -> None:
        self._owl.release()
        self._text = None

    @classmethod
    def from_config(cls, config) -> "PromptScorer":
        """From a PipelineConfig's prompt_model, nominal_prompts, anomaly_prompts, prompt_input_size."""
        return cls(config.prompt_model, list(config.nominal_prompts), list(config.anomaly_prompts),
                   config.prompt_input_size, config.device, config.dtype)


__all__ = [
    "DEFAULT_PROMPT_MODEL",
    "DEFAULT_TEMPLATES",
    "PromptScorer",
    "ensemble_concepts",
    "fuse_score_maps",
    "parse_prompts",
    "prompt_anomaly_map",
    "resize_map",
]
